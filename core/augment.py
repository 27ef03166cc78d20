"""Image augmentation with Keras preprocessing layers (active in training only).

The course's ``ImageDataGenerator`` recipe (flip, rotation, zoom, shift, contrast)
as Keras layers. The geometric steps are one :class:`RandomAffine` layer: flip,
rotation, zoom and shift composed into one matrix per image and applied by one
``keras.ops.image.affine_transform``, so each batch is resampled once rather
than three times (Keras' RandomRotation, RandomZoom and RandomTranslation each
resample the whole batch); this is what keeps augmentation off the critical
path of training.
"""
from __future__ import annotations

import math

AUGMENT_STEPS = {
    # The course's ImageDataGenerator recipe, as Keras layers.
    "default": [
        ("RandomAffine", {"flip": True, "rotation": 0.1, "zoom": 0.2, "shift": 0.1, "fill_mode": "nearest"}),
        ("RandomContrast", {"factor": 0.2, "value_range": (0, 255)}),
    ],
}


def _random_affine_class():
    import keras
    from keras import ops

    class RandomAffine(keras.layers.Layer):
        """Random horizontal flip, rotation (± ``rotation`` of a full turn), zoom (scale in
        1 ± ``zoom``) and shift (± ``shift`` of the size), as one resampling per image.
        Identity unless called with ``training=True``."""

        def __init__(self, flip=True, rotation=0.1, zoom=0.2, shift=0.1, fill_mode="nearest", seed=None, **kwargs):
            super().__init__(**kwargs)
            self.flip, self.rotation, self.zoom, self.shift = bool(flip), float(rotation), float(zoom), float(shift)
            self.fill_mode, self.seed = fill_mode, seed
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, images, training=False):
            if not training:
                return images
            images = ops.convert_to_tensor(images, dtype=self.compute_dtype)
            shape = ops.shape(images)
            n, h, w = shape[0], ops.cast(shape[1], "float32"), ops.cast(shape[2], "float32")

            def uniform(lo, hi):
                return keras.random.uniform((n,), lo, hi, seed=self.seed_generator)

            sx = ops.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0) if self.flip else ops.ones((n,))
            theta = uniform(-self.rotation, self.rotation) * 2 * math.pi
            scale = 1.0 + uniform(-self.zoom, self.zoom)
            tx, ty = uniform(-self.shift, self.shift) * w, uniform(-self.shift, self.shift) * h
            cos, sin = ops.cos(theta) * scale, ops.sin(theta) * scale
            # output pixel p → input pixel c + scale * R(theta) * F * (p - c) + t
            a0, a1 = cos * sx, -sin
            b0, b1 = sin * sx, cos
            cx, cy = (w - 1) / 2, (h - 1) / 2
            a2 = cx - a0 * cx - a1 * cy + tx
            b2 = cy - b0 * cx - b1 * cy + ty
            zeros = ops.zeros((n,))
            transform = ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
            return ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode=self.fill_mode)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "flip": self.flip, "rotation": self.rotation, "zoom": self.zoom,
                    "shift": self.shift, "fill_mode": self.fill_mode, "seed": self.seed}

    return RandomAffine


def augmentation_model(kind: str, seed: int = 0):
    """A Sequential of random layers for ``kind`` ("default"), or None for "none"."""
    if kind == "none":
        return None
    import keras

    steps = AUGMENT_STEPS[kind]
    layers = []
    for i, (name, kw) in enumerate(steps):
        cls = _random_affine_class() if name == "RandomAffine" else getattr(keras.layers, name)
        layers.append(cls(seed=seed + i, **kw))
    return keras.Sequential(layers, name="augmentation")
