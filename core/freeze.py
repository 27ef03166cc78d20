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

    @classmethod
    def from_unlocked(cls, names: list[str], unlocked) -> "FreezeSpec":
        """The simplest spec that unlocks exactly ``unlocked`` among ``names`` (in base order):
        all, none, up-to:LAYER when the unlocked layers are the top ones, else unlock:A,B,…

        ``names`` are the layers that matter (those with weights that could train); a
        per-layer table's checkboxes become a spec that round-trips through JSON and the
        command line (``--freeze``).
        """
        chosen = [n for n in names if n in set(unlocked)]
        if not chosen:
            return cls("all")
        if len(chosen) == len(names):
            return cls("none")
        first = names.index(chosen[0])
        if chosen == names[first:]:
            return cls("up-to", layer=names[first - 1])
        bad = [n for n in chosen if "," in n or ":" in n]
        if bad:
            raise ConfigError(f"freeze: Expected layer names without ',' or ':'. Received: {bad[0]!r}")
        return cls("unlock", names=tuple(chosen))

    def __str__(self) -> str:
        if self.mode == "up-to":
            return f"up-to:{self.layer}"
        if self.mode == "top":
            return f"top:{self.n}"
        if self.mode == "unlock":
            return "unlock:" + ",".join(self.names)
        return self.mode

    def describe(self) -> str:
        """The lock in words (for summaries such as the sidebar)."""
        if self.mode == "all":
            return "all base layers locked"
        if self.mode == "none":
            return "no layer locked (fine-tune all)"
        if self.mode == "up-to":
            return f"locked up to {self.layer}"
        if self.mode == "top":
            return f"all but the top {self.n} layers locked"
        shown = ", ".join(self.names[:3]) + (", …" if len(self.names) > 3 else "")
        return f"{len(self.names)} layer{'s' if len(self.names) != 1 else ''} unlocked by hand ({shown}), the rest locked"

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
    for pattern in (r"^(block_?\d+[a-z]?)", r"^(conv\d_block\d+)", r"^(mixed\d+)", r"^(conv\d)(?:_|$)",
                    r"^(expanded_conv(?:_\d+)?)"):
        m = re.match(pattern, name)
        if m:
            return m.group(1)
    return "stem" if not name.startswith(("top", "out", "post", "head")) else "top"


def filter_rows(rows: list[dict], text: str = "", types=()) -> list[dict]:
    """Rows whose name, type or block contains ``text`` (case-insensitive), and whose type
    is one of ``types`` (any type when empty)."""
    t = (text or "").strip().lower()
    out = [r for r in rows if not types or r["type"] in types]
    if not t:
        return out
    own = lambda r: r["name"].rsplit("/", 1)[-1].lower()  # a nested layer's own name, not its model's
    return [r for r in out if t in own(r) or t in r["type"].lower() or t in r["block"].lower()]


def walk_layers(model, expand_nested: bool = True, prefix: str = "", parent_trainable: bool = True):
    """(path, layer, effectively trainable) for each layer; a nested model's layers are listed
    in its place with paths like ``mobilenet_1.00_224/conv1`` (its input layer left out)."""
    import keras

    for layer in model.layers:
        if prefix and type(layer).__name__ == "InputLayer":
            continue
        trainable = parent_trainable and layer.trainable
        if expand_nested and isinstance(layer, keras.Model):
            yield from walk_layers(layer, True, f"{prefix}{layer.name}/", trainable)
        else:
            yield f"{prefix}{layer.name}", layer, trainable


def _shape(layer) -> tuple:
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return ()


def layer_table(model, spec: FreezeSpec | str | None = None, expand_nested: bool = True) -> list[dict]:
    """One row per layer, like ``model.summary()``: what a person needs to choose a lock.

    With ``spec`` the rows say what that lock would do to the (top-level) layers;
    without, what their ``trainable`` flags say now. Nested models are expanded.
    """
    if isinstance(spec, str):
        spec = FreezeSpec.parse(spec)
    mask = dict(zip([layer.name for layer in model.layers],
                    spec.locked_mask([layer.name for layer in model.layers]))) if spec else {}
    rows = []
    for i, (path, layer, trainable) in enumerate(walk_layers(model, expand_nested)):
        is_bn = type(layer).__name__ in BATCHNORM_TYPES
        if spec:
            top = path.split("/")[0]
            trainable = not mask.get(top, True) and not is_bn
        rows.append({
            "index": i,
            "name": path,
            "type": type(layer).__name__,
            "output_shape": str(_shape(layer)),
            "params": count_params(layer.weights),
            "trainable": bool(layer.weights) and bool(trainable),
            "block": block_of(path.split("/")[-1]),
        })
    return rows


# -- what a setting costs, read off a base that is never changed ---------------------------------
# Each takes a Keras base or its core.baseinfo.BaseInfo (what the app has: no TensorFlow there).

def cut_index(base, cut: str | None) -> int:
    """Index of the last layer kept when the base is cut at ``cut`` (the last layer if None)."""
    from core.baseinfo import as_info

    names = as_info(base).names()
    if not cut or cut not in names:
        return len(names) - 1
    return names.index(cut)


def fine_tune_problem(base, config, layers: int | None = None) -> str | None:
    """Why fine-tuning the top ``layers`` (default ``config.fine_tune_layers``) base layers cannot be
    done: more than the base has up to its cut. None when it can (0 asks for no fine-tuning)."""
    from core.baseinfo import as_info

    n = config.fine_tune_layers if layers is None else layers
    if not n:
        return None
    info = as_info(base)
    total = cut_index(info, config.cut) + 1
    if n <= total:
        return None
    from core.bases import BASES

    spec = BASES.get(config.base)
    where = f"the layers of {spec.label if spec else info.name}" + (f" up to the cut at {config.cut}" if config.cut else "")
    return f"fine_tune_layers: Expected 0 to {total} ({where}). Received: {n}"


def lockable_names(base, config) -> list[str]:
    """Layers up to the cut whose weights a lock decides (BatchNorm only if it may train)."""
    from core.baseinfo import as_info

    info = as_info(base)
    train_bn = batchnorm_trains(config)
    return [layer.name for layer in info.layers[: cut_index(info, config.cut) + 1]
            if layer.trainable_params and (train_bn or layer.type not in BATCHNORM_TYPES)]


def layer_rows(base, config) -> list[dict]:
    """The layer table (like ``model.summary()``) with each layer's state under ``config``.

    ``state`` is "trainable", "locked", "locked (BatchNorm)", "no weights" or "cut off"
    (after the cut layer, not part of the model); ``suggested_cut`` marks the base's
    named cut points. Reads ``base`` only. Raises ConfigError for an unknown lock layer.
    """
    import re

    from core.bases import BASES
    from core.baseinfo import as_info

    info = as_info(base)
    last = cut_index(info, config.cut)
    mask = FreezeSpec.parse(config.freeze).locked_mask(info.names()[: last + 1])
    spec = BASES.get(config.base)
    pattern = re.compile(spec.cut_pattern) if spec else None
    rows = []
    for i, layer in enumerate(info.layers):
        row = {"index": i, "name": layer.name, "type": layer.type,
               "output_shape": str(layer.output_shape if layer.output_shape is not None else ()),
               "params": layer.params, "block": block_of(layer.name)}
        is_bn = layer.type in BATCHNORM_TYPES
        row["suggested_cut"] = bool(pattern and pattern.match(layer.name)) or i == len(info.layers) - 1
        if i > last:
            row["trainable"], row["state"] = False, "cut off"
        elif not layer.params:
            row["trainable"], row["state"] = False, "no weights"
        elif mask[i] or (is_bn and not batchnorm_trains(config)):
            row["trainable"] = False
            row["state"] = "locked" if mask[i] else "locked (BatchNorm)"
        else:
            row["trainable"], row["state"] = True, "trainable"
        rows.append(row)
    return rows


def lock_param_counts(base, config, num_classes: int) -> dict:
    """Trainable and locked parameters of the model ``config`` would build on ``base``.

    Counts as ``model.summary()`` does (BatchNorm moving statistics are never
    trainable; unlocked BatchNorm scale/offset only when BatchNorm may train),
    using the (un-mutated) base's layers up to the cut, plus the head estimate.
    Raises ConfigError for an unknown ``up-to`` layer.
    """
    from core.baseinfo import as_info
    from core.head import head_param_estimate

    info = as_info(base)
    layers = info.layers[: cut_index(info, config.cut) + 1]
    mask = FreezeSpec.parse(config.freeze).locked_mask([layer.name for layer in layers])
    trainable = locked = 0
    for layer, is_locked in zip(layers, mask):
        is_bn = layer.type in BATCHNORM_TYPES
        t = 0 if is_locked or (is_bn and not batchnorm_trains(config)) else layer.trainable_params
        trainable += t
        locked += layer.params - t
    feature_shape = tuple(int(d) for d in (layers[-1].output_shape or (None,))[1:])
    head = head_param_estimate(feature_shape, config, num_classes) if len(feature_shape) == 3 else 0
    return {"base_trainable": trainable, "base_locked": locked, "head": head,
            "trainable": trainable + head, "locked": locked, "total": trainable + locked + head,
            "feature_shape": feature_shape}


def unlocked_batchnorm(base, config) -> list[str]:
    """BatchNorm layers that ``config`` leaves unlocked and that will update (pretrained base
    with train_batchnorm on); [] when BatchNorm stays locked or the base is random."""
    if not config.train_batchnorm or config.weights == "none":
        return []
    return [r["name"] for r in layer_rows(base, config)
            if r["type"] in BATCHNORM_TYPES and r["state"] == "trainable"]
