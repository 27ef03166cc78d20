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


# Per-weight slots each optimizer keeps while training (Keras defaults as core.train makes them).
OPTIMIZER_SLOTS = {"adam": 2, "rmsprop": 1, "sgd": 1}  # m and v; the mean square; momentum 0.9


def head_plan(feature_shape: tuple, config: ExperimentConfig, num_classes: int) -> dict:
    """What the head will cost before it is built: parameters, the width going into the
    first dense layer, and memory in bytes (float32 weights plus the optimizer's slots)."""
    h, w, c = feature_shape
    params = head_param_estimate(feature_shape, config, num_classes)
    slots = OPTIMIZER_SLOTS.get(config.optimizer, 2)
    return {
        "params": params,
        "inputs": c if config.pooling == "gap" else h * w * c,
        "weights_bytes": 4 * params,
        "training_bytes": 4 * params * (1 + slots),
        "optimizer_slots": slots,
        "cap": MAX_HEAD_PARAMS,
        "over_cap": params > MAX_HEAD_PARAMS,
    }


def mib(n_bytes: int) -> str:
    if n_bytes >= 10 * 2**20:
        return f"{n_bytes / 2**20:,.0f} MiB"
    return f"{n_bytes / 2**20:,.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:,.1f} KiB"


def check_head_size(feature_shape: tuple, config: ExperimentConfig, num_classes: int) -> int:
    plan = head_plan(feature_shape, config, num_classes)
    n = plan["params"]
    if plan["over_cap"]:
        h, w, c = feature_shape
        raise ConfigError(
            f"head: Expected at most {MAX_HEAD_PARAMS:,} head parameters. Received: {n:,} "
            f"(Flatten of a {h}x{w}x{c} feature map into {config.dense[0] if config.dense else num_classes} units: "
            f"{mib(plan['weights_bytes'])} of weights, {mib(plan['training_bytes'])} with {config.optimizer}'s "
            f"slots while training); use pooling 'gap', fewer units, a smaller image size or an earlier cut"
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
