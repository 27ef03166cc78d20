"""The dense head placed on a base: pooling, hidden dense layers, dropout, output."""
from __future__ import annotations

from core.config import MAX_HEAD_PARAMS, ConfigError, ExperimentConfig


def head_param_estimate(feature_shape: tuple, config: ExperimentConfig, num_classes: int) -> int:
    """Parameters of the head on a feature map of ``feature_shape`` (H, W, C)."""
    h, w, c = feature_shape
    width = c if config.pooling == "gap" else h * w * c
    total = 0
    for units in list(config.dense) + [num_classes]:
        total += width * units + units
        width = units
    return total


def check_head_size(feature_shape: tuple, config: ExperimentConfig, num_classes: int) -> int:
    n = head_param_estimate(feature_shape, config, num_classes)
    if n > MAX_HEAD_PARAMS:
        h, w, c = feature_shape
        raise ConfigError(
            f"head: Expected at most {MAX_HEAD_PARAMS:,} head parameters. Received: {n:,} "
            f"(Flatten of a {h}x{w}x{c} feature map into {config.dense[0] if config.dense else num_classes} units, "
            f"about {n * 4 / 2**20:,.0f} MiB of weights); use pooling 'gap', fewer units, or a smaller image size"
        )
    return n


def build_head_layers(config: ExperimentConfig, num_classes: int) -> list:
    """The head as a list of layers; the first is the pooling layer.

    Keeping the pooling layer first lets training on cached features skip it
    (features are cached already pooled) while the saved model still has it.
    """
    from keras import layers

    if num_classes < 2:
        raise ConfigError(f"classes: Expected at least 2 classes. Received: {num_classes}")
    pool = layers.GlobalAveragePooling2D(name="head_pool") if config.pooling == "gap" else layers.Flatten(name="head_flatten")
    out = [pool]
    rates = config.dropout_rates()
    for i, units in enumerate(config.dense):
        out.append(layers.Dense(units, activation="relu", name=f"head_dense_{i + 1}"))
        out.append(layers.Dropout(rates[i], name=f"head_dropout_{i + 1}"))
    if not config.dense:
        out.append(layers.Dropout(rates[0], name="head_dropout"))
    out.append(layers.Dense(num_classes, activation="softmax", name="predictions"))
    return out
