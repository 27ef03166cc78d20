"""Image augmentation with Keras preprocessing layers (active in training only)."""
from __future__ import annotations

AUGMENT_STEPS = {
    # The course's ImageDataGenerator recipe, as Keras layers.
    "default": [
        ("RandomFlip", {"mode": "horizontal"}),
        ("RandomRotation", {"factor": 0.1, "fill_mode": "nearest"}),
        ("RandomZoom", {"height_factor": 0.2, "fill_mode": "nearest"}),
        ("RandomTranslation", {"height_factor": 0.1, "width_factor": 0.1, "fill_mode": "nearest"}),
        ("RandomContrast", {"factor": 0.2, "value_range": (0, 255)}),
    ],
}


def augmentation_model(kind: str, seed: int = 0):
    """A Sequential of random layers for ``kind`` ("default"), or None for "none"."""
    if kind == "none":
        return None
    import keras

    steps = AUGMENT_STEPS[kind]
    return keras.Sequential(
        [getattr(keras.layers, name)(seed=seed + i, **kw) for i, (name, kw) in enumerate(steps)],
        name="augmentation",
    )
