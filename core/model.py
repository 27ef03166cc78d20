"""Assemble one Keras model: raw RGB in → base preprocessing → base → head.

``build_model`` is the only place a Transfer Lab model is put together; it
never compiles (``core.train.compile_model`` does, after every lock change).
"""
from __future__ import annotations

from dataclasses import dataclass

from core.bases import build_base, copy_base, cut_base, get_spec, preprocessing_layer
from core.config import ExperimentConfig
from core.freeze import BATCHNORM_TYPES, apply_freeze, base_is_frozen, batchnorm_trains


def from_scratch_warning(config: ExperimentConfig, base_frozen: bool | None = None) -> str | None:
    """The trap of weights none with every base layer locked, in words (None when not in it)."""
    frozen = config.freeze == "all" if base_frozen is None else base_frozen
    if config.weights == "none" and frozen and config.fine_tunes():
        return (f"weights none with every base layer locked: in the first phase the head learns from random "
                f"features (expect about chance accuracy); fine-tuning then trains the top {config.fine_tune_layers} "
                f"layers, still from random weights, at a low learning rate. To train from scratch, unlock layers "
                f"(freeze none); for transfer learning, use a weights file")
    if config.weights == "none" and frozen:
        return ("weights none with every base layer locked: the head learns from random features "
                "(in MobileNets they fade to almost zero, so expect chance accuracy). Unlock layers "
                "(freeze none) to train from scratch, or use a weights file")
    return None


def pretrained_bn_trains(base) -> bool:
    return any(layer.trainable and type(layer).__name__ in BATCHNORM_TYPES for layer in base.layers)
from core.head import build_head_layers, check_head_size


@dataclass
class BuiltModel:
    model: object  # keras.Model: (None, S, S, 3) float32 raw 0–255 → class probabilities
    base: object  # the (cut) base, a keras.Model nested in ``model``
    head_layers: list  # pooling first, then dense/dropout, then the output layer
    preprocess: object | None  # the preprocessing layer, or None when inside the base
    image_size: int
    feature_shape: tuple  # the base's output (H, W, C)

    @property
    def base_frozen(self) -> bool:
        return base_is_frozen(self.base)

    def warnings(self, config: ExperimentConfig) -> list[str]:
        scratch = from_scratch_warning(config, self.base_frozen)
        out = [scratch] if scratch else []
        if pretrained_bn_trains(self.base) and config.weights != "none":
            out.append(
                "unlocked BatchNorm layers will update their statistics on your data "
                "(train_batchnorm is on); with few images this can wreck the pretrained features"
            )
        return out


def build_model(config: ExperimentConfig, num_classes: int, base=None, copy: bool = True) -> BuiltModel:
    """Build the whole model for ``config``.

    ``base`` may be given: an already built base for ``config`` (say a cached pretrained
    one). It is only read: the model gets its own copy, which is cut, locked and trained,
    so a base shared between reruns or experiments never changes. ``copy=False`` uses
    ``base`` itself: only for a base the caller built for models that all lock it whole
    (heads side by side, :func:`core.train.train_together`).
    """
    import keras

    spec = get_spec(config.base)
    size = config.resolved_image_size()
    if base is None:
        base = build_base(config.base, size, config.alpha, config.weights)
    elif copy:
        base = copy_base(base)
    base = cut_base(base, config.cut)
    pretrained = config.weights != "none"
    # The BatchNorm rules protect pretrained statistics; a randomly initialised base has
    # none to protect, and its BatchNorm must learn them (else activations vanish).
    apply_freeze(base, config.freeze, batchnorm_trains(config))
    if not pretrained:
        # Keras bases use BatchNorm momentum 0.99 (0.999 in MobileNet): on a small dataset
        # the moving statistics would still be near their initial values when training
        # ends, and the model would predict from vanished features at inference.
        for layer in base.layers:
            if type(layer).__name__ in BATCHNORM_TYPES:
                layer.momentum = min(layer.momentum, 0.9)
    feature_shape = tuple(int(d) for d in base.output.shape[1:])
    check_head_size(feature_shape, config, num_classes)

    inputs = keras.Input((size, size, 3), name="image")
    pre = preprocessing_layer(spec.preprocess)
    x = pre(inputs) if pre is not None else inputs
    # training=False keeps BatchNorm in inference mode even when layers are unlocked
    # for fine-tuning, so its statistics are not wrecked by a small new dataset.
    x = base(x, training=False) if pretrained else base(x)
    # The head's initial weights depend on the seed alone, however the base was had (built here,
    # or copied from a shared one): runs that differ in dropout only start from the same head.
    keras.utils.set_random_seed(config.seed)
    head = build_head_layers(config, num_classes)
    for layer in head:
        x = layer(x)
    model = keras.Model(inputs, x, name=f"transfer_lab_{config.base}")
    return BuiltModel(model, base, head, pre, size, feature_shape)
