"""Locking layers: the FreezeSpec, applying it to a base, and the layer table.

Nothing here compiles: a change to ``trainable`` only takes effect at the next
compile, and only ``core.train`` compiles (see ``core.train.compile_model``).
"""
from __future__ import annotations

from dataclasses import dataclass

from core.config import ConfigError

BATCHNORM_TYPES = ("BatchNormalization", "SyncBatchNormalization")


@dataclass(frozen=True)
class FreezeSpec:
    mode: str  # "all", "none", "up-to", "top", "unlock" (exactly the named layers unlocked)
    layer: str | None = None
    n: int | None = None
    names: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text) -> "FreezeSpec":
        expected = "'all', 'none', 'up-to:LAYER', 'top:N' or 'unlock:LAYER,LAYER,…'"
        if not isinstance(text, str):
            raise ConfigError(f"freeze: Expected {expected}. Received: {text!r}")
        t = text.strip()
        if t in ("all", "none"):
            return cls(t)
        kind, _, arg = t.partition(":")
        if kind == "up-to" and arg:
            return cls("up-to", layer=arg)
        if kind == "top" and arg.isdigit():
            return cls("top", n=int(arg))
        if kind == "unlock" and arg:
            return cls("unlock", names=tuple(n.strip() for n in arg.split(",") if n.strip()))
        raise ConfigError(f"freeze: Expected {expected}. Received: {text!r}")

    def __str__(self) -> str:
        if self.mode == "up-to":
            return f"up-to:{self.layer}"
        if self.mode == "top":
            return f"top:{self.n}"
        if self.mode == "unlock":
            return "unlock:" + ",".join(self.names)
        return self.mode

    def locked_mask(self, layer_names: list[str]) -> list[bool]:
        """For each layer in order, whether it is locked."""
        n = len(layer_names)
        if self.mode == "all":
            return [True] * n
        if self.mode == "none":
            return [False] * n
        if self.mode == "top":
            k = min(self.n, n)
            return [i < n - k for i in range(n)]
        wanted = self.names if self.mode == "unlock" else (self.layer,)
        missing = [w for w in wanted if w not in layer_names]
        if missing:
            self._unknown(missing[0], layer_names)
        if self.mode == "unlock":
            return [name not in self.names for name in layer_names]
        idx = layer_names.index(self.layer)
        return [i <= idx for i in range(n)]

    def _unknown(self, name, layer_names):
        import difflib

        close = difflib.get_close_matches(name, layer_names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"freeze: Expected {self.mode}: with layer names of the base. "
                          f"Received: {name!r}.{hint}")


def batchnorm_trains(config) -> bool:
    """Whether unlocked BatchNorm layers train: when asked, or when the base is random
    (weights none: there are no pretrained statistics to protect)."""
    return bool(config.train_batchnorm) or config.weights == "none"


def apply_freeze(base, spec: FreezeSpec | str, train_batchnorm: bool = False) -> None:
    """Set ``layer.trainable`` on the base's layers. BatchNorm stays locked unless asked.

    Unlocked BatchNorm layers would update their statistics on a small new
    dataset and wreck the pretrained features (the base also runs with
    ``training=False``, so this keeps the scale and offset fixed too).
    """
    if isinstance(spec, str):
        spec = FreezeSpec.parse(spec)
    layers = base.layers
    mask = spec.locked_mask([layer.name for layer in layers])
    base.trainable = True
    for layer, locked in zip(layers, mask):
        is_bn = type(layer).__name__ in BATCHNORM_TYPES
        layer.trainable = not locked and (train_batchnorm or not is_bn)
    if all(not layer.trainable for layer in layers if layer.weights):
        base.trainable = False


def base_is_frozen(base) -> bool:
    return not any(w.trainable for w in base.weights) if base.trainable else True


def count_params(weights) -> int:
    import numpy as np

    return int(sum(np.prod(w.shape) for w in weights))


def param_counts(model) -> dict[str, int]:
    """Trainable and locked (non-trainable) parameter counts, as model.summary() gives them."""
    trainable = count_params(model.trainable_weights)
    locked = count_params(model.non_trainable_weights)
    return {"trainable": trainable, "locked": locked, "total": trainable + locked}


def block_of(name: str) -> str:
    """The block a layer belongs to, from its name (``block_3_expand`` → ``block_3``)."""
    import re

    m = re.match(r"^conv_(?:dw|pw|pad)_(\d+)", name)  # MobileNet v1
    if m:
        return f"block_{m.group(1)}"
    for pattern in (r"^(block_?\d+[a-z]?)", r"^(conv\d_block\d+)", r"^(mixed\d+)", r"^(conv\d)_",
                    r"^(expanded_conv(?:_\d+)?)"):
        m = re.match(pattern, name)
        if m:
            return m.group(1)
    return "stem" if not name.startswith(("top", "out", "post", "head")) else "top"


def filter_rows(rows: list[dict], text: str) -> list[dict]:
    """Rows whose name, type or block contains ``text`` (case-insensitive)."""
    t = (text or "").strip().lower()
    if not t:
        return rows
    return [r for r in rows if t in r["name"].lower() or t in r["type"].lower() or t in r["block"].lower()]


def layer_table(base, spec: FreezeSpec | str | None = None) -> list[dict]:
    """One row per layer, like ``model.summary()``: what a person needs to choose a lock."""
    if isinstance(spec, str):
        spec = FreezeSpec.parse(spec)
    layers = base.layers
    mask = spec.locked_mask([layer.name for layer in layers]) if spec else [not layer.trainable for layer in layers]
    rows = []
    for i, (layer, locked) in enumerate(zip(layers, mask)):
        is_bn = type(layer).__name__ in BATCHNORM_TYPES
        try:
            shape = tuple(layer.output.shape)
        except (AttributeError, ValueError):
            shape = ()
        rows.append({
            "index": i,
            "name": layer.name,
            "type": type(layer).__name__,
            "output_shape": str(shape),
            "params": count_params(layer.weights),
            "trainable": bool(layer.weights) and not locked and not is_bn,
            "block": block_of(layer.name),
        })
    return rows
