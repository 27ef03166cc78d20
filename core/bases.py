"""Registry of pretrained bases: builder, sizes, preprocessing, cut points.

The registry itself is plain data (no TensorFlow import); building a base
imports Keras lazily. Each base's preprocessing becomes a real Keras layer in
front of it (see :func:`preprocessing_layer`), so every model built here takes
raw RGB pixels in 0–255.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class WeightsError(Exception):
    """Weights cannot be had or do not fit; the message says what and why."""


@dataclass(frozen=True)
class BaseSpec:
    name: str
    label: str
    builder: str  # attribute of keras.applications
    default_size: int
    min_size: int
    preprocess: str  # "tf" [-1, 1], "caffe" BGR - mean, "torch" mean/std, "none" (inside the base)
    alphas: tuple[float, ...] = ()  # allowed width multipliers; () means no alpha
    imagenet_sizes: tuple[int, ...] = ()  # sizes with their own ImageNet weights, if any
    cut_pattern: str = r"$^"  # regex of layer names suggested as cut points

    def builder_kwargs(self, alpha: float) -> dict:
        return {"alpha": float(alpha)} if self.alphas else {}

    @property
    def preprocess_text(self) -> str:
        return PREPROCESS_TEXT[self.preprocess]

    def sizes_text(self) -> str:
        """Allowed input sizes in words: any square size from ``min_size`` up, and which have ImageNet weights."""
        text = f"any size from {self.min_size} px (trained at {self.default_size} px)"
        if self.imagenet_sizes:
            text += f"; ImageNet weights exist for {', '.join(str(s) for s in self.imagenet_sizes)} px"
        return text


PREPROCESS_TEXT = {
    "tf": "x / 127.5 - 1 (to [-1, 1])",
    "caffe": "RGB to BGR, minus the ImageNet mean (caffe)",
    "torch": "x / 255, minus the ImageNet mean, divided by its std (torch)",
    "none": "inside the base (its own Rescaling/Normalization layers)",
}


_SPECS = [
    BaseSpec("mobilenet", "MobileNet", "MobileNet", 224, 32, "tf",
             alphas=(0.25, 0.5, 0.75, 1.0), imagenet_sizes=(128, 160, 192, 224),
             cut_pattern=r"^conv_pw_\d+_relu$"),
    BaseSpec("mobilenet_v2", "MobileNetV2", "MobileNetV2", 224, 32, "tf",
             alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4), imagenet_sizes=(96, 128, 160, 192, 224),
             cut_pattern=r"^(block_\d+_add|out_relu)$"),
    BaseSpec("inception_v3", "InceptionV3", "InceptionV3", 299, 75, "tf",
             cut_pattern=r"^mixed\d+$"),
    BaseSpec("efficientnet_b0", "EfficientNetB0", "EfficientNetB0", 224, 32, "none",
             cut_pattern=r"^(block\d+[a-z]_add|top_activation)$"),
    BaseSpec("resnet50", "ResNet50", "ResNet50", 224, 32, "caffe",
             cut_pattern=r"^conv\d_block\d+_out$"),
    BaseSpec("resnet50_v2", "ResNet50V2", "ResNet50V2", 224, 32, "tf",
             cut_pattern=r"^(conv\d_block\d+_out|post_relu)$"),
    BaseSpec("densenet121", "DenseNet121", "DenseNet121", 224, 32, "torch",
             cut_pattern=r"^(pool\d_pool|relu)$"),
    BaseSpec("mobilenet_v3_small", "MobileNetV3Small", "MobileNetV3Small", 224, 32, "none",
             alphas=(0.75, 1.0), imagenet_sizes=(224,), cut_pattern=r"^expanded_conv_\d+_add$"),
    BaseSpec("mobilenet_v3_large", "MobileNetV3Large", "MobileNetV3Large", 224, 32, "none",
             alphas=(0.75, 1.0), imagenet_sizes=(224,), cut_pattern=r"^expanded_conv_\d+_add$"),
    BaseSpec("efficientnet_b1", "EfficientNetB1", "EfficientNetB1", 240, 32, "none",
             cut_pattern=r"^(block\d+[a-z]_add|top_activation)$"),
    BaseSpec("efficientnet_b2", "EfficientNetB2", "EfficientNetB2", 260, 32, "none",
             cut_pattern=r"^(block\d+[a-z]_add|top_activation)$"),
    BaseSpec("efficientnet_b3", "EfficientNetB3", "EfficientNetB3", 300, 32, "none",
             cut_pattern=r"^(block\d+[a-z]_add|top_activation)$"),
    BaseSpec("vgg16", "VGG16", "VGG16", 224, 32, "caffe", cut_pattern=r"^block\d_pool$"),
    BaseSpec("xception", "Xception", "Xception", 299, 71, "tf",
             cut_pattern=r"^(block\d+_pool|block1[0-3]_sepconv3_act|block14_sepconv2_act)$"),
]
BASES: dict[str, BaseSpec] = {s.name: s for s in _SPECS}


def get_spec(name: str) -> BaseSpec:
    try:
        return BASES[name]
    except KeyError:
        raise ValueError(f"base: Expected one of {', '.join(BASES)}. Received: {name!r}") from None


# -- preprocessing as a layer ---------------------------------------------------------

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def base_label(config) -> str:
    """How the pages name a config's base: "MobileNetV2, alpha 0.35, 160 px"."""
    spec = BASES.get(config.base)
    if spec is None:
        return f"{config.base}, {config.image_size} px"
    alpha = f", alpha {config.alpha:g}" if spec.alphas else ""
    return f"{spec.label}{alpha}, {config.resolved_image_size()} px"


def preprocessing_layer(mode: str):
    """The base's ``preprocess_input`` as a built-in Keras layer (reloads safely, no Lambda).

    Returns None for bases that preprocess inside themselves.
    """
    import numpy as np
    from keras import layers

    if mode == "tf":  # x / 127.5 - 1
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess_tf")
    if mode == "torch":  # (x / 255 - mean) / std, per RGB channel
        mean = [255.0 * m for m in TORCH_MEAN]
        var = [(255.0 * s) ** 2 for s in TORCH_STD]
        return layers.Normalization(mean=mean, variance=var, name="preprocess_torch")
    if mode == "caffe":  # RGB -> BGR, minus the ImageNet mean; a fixed 1x1 convolution
        perm = np.zeros((1, 1, 3, 3), np.float32)
        for out_c, in_c in enumerate((2, 1, 0)):
            perm[0, 0, in_c, out_c] = 1.0
        bias = -np.asarray(CAFFE_MEAN_BGR, np.float32)
        layer = layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False,
                              kernel_initializer=_const(perm), bias_initializer=_const(bias))
        return layer
    if mode == "none":
        return None
    raise ValueError(f"preprocess: Expected one of tf, caffe, torch, none. Received: {mode!r}")


def _const(value):
    import keras

    return keras.initializers.Constant(value)


# -- building ------------------------------------------------------------------------

def build_base(name: str, image_size: int | None = None, alpha: float = 1.0, weights: str = "imagenet"):
    """Build the headless base (``include_top=False``) with the requested weights.

    ``weights`` is ``"imagenet"`` (Keras download, cached in ``~/.keras``),
    ``"none"`` (random initialisation) or the path of a weights file (legacy
    Keras applications ``.h5`` or Keras 3 ``.weights.h5``). Raises
    :class:`WeightsError` with a message that says what went wrong.
    """
    import keras

    spec = get_spec(name)
    size = int(image_size or spec.default_size)
    builder = getattr(keras.applications, spec.builder)
    kwargs = dict(include_top=False, input_shape=(size, size, 3), **spec.builder_kwargs(alpha))
    if weights == "none":
        return stable_names(builder(weights=None, **kwargs))
    if weights == "imagenet":
        try:
            return stable_names(builder(weights="imagenet", **kwargs))
        except Exception as e:  # Keras raises a bare Exception on a failed download
            if "fetch failure" in str(e) or isinstance(e, OSError):
                raise WeightsError(
                    f"Could not download the ImageNet weights for {spec.label} (no internet connection?). "
                    "Use a weights file instead (e.g. a Keras applications *_notop.h5), "
                    "or weights none to train from scratch"
                ) from None
            raise WeightsError(f"ImageNet weights for {spec.label}: {_first_line(e)}") from None
    return stable_names(_build_with_file(spec, builder, kwargs, Path(weights), alpha, size))


def stable_names(base):
    """Give layers that Keras named automatically (``activation_111``) the names a fresh
    process would give them (``activation_3``), counted within this base.

    Keras numbers unnamed layers with a process-wide counter, so without this the same
    MobileNetV3 layer has another name in every base built, and a lock or cut chosen in
    the layer table would not be found in the base a run builds.
    """
    from keras.src.utils.naming import to_snake_case

    layers = base.layers
    taken = {layer.name for layer in layers}
    seen: dict[str, int] = {}
    for layer in layers:
        prefix = to_snake_case(type(layer).__name__)
        if not re.fullmatch(rf"{re.escape(prefix)}(_\d+)?", layer.name):
            continue
        k = seen.get(prefix, 0)
        seen[prefix] = k + 1
        new = prefix if k == 0 else f"{prefix}_{k}"
        if new != layer.name and new not in taken:
            taken.discard(layer.name)
            taken.add(new)
            layer.name = new
    return base


def copy_base(base):
    """An independent copy of a built base: same layers, names, weights and flags.

    A pretrained base may be cached and shared (reruns, sessions); a run locks,
    cuts and trains its own copy so the cached one never changes.
    """
    import keras

    copy = keras.models.clone_model(base)
    copy.set_weights(base.get_weights())
    for src, dst in zip(base.layers, copy.layers):
        dst.trainable = src.trainable
        if type(dst).__name__ == "Normalization" and getattr(dst, "adapt_mean", None) is not None:
            dst.finalize_state()  # computes from its (now copied) mean and variance
    copy.trainable = base.trainable
    if base.layers and copy.layers and type(copy.layers[0]).__name__ == "InputLayer":
        copy.layers[0].name = base.layers[0].name  # clone_model names it after its tensor
    return copy


def _build_with_file(spec: BaseSpec, builder, kwargs, path: Path, alpha: float, size: int):
    what = f"{spec.label}" + (f" (alpha {alpha})" if spec.alphas else "") + ", no top"
    if not path.is_file():
        raise WeightsError(f"weights: Expected a weights file for {what}. Received: {path} (no such file)")
    with open(path, "rb") as f:
        head = f.read(8)
    if head != HDF5_MAGIC:
        from core.images import describe_bytes

        raise WeightsError(
            f"weights: Expected an HDF5 weights file (.h5 or .weights.h5) for {what}. "
            f"Received: {path.name}, which is {describe_bytes(head)}, not HDF5"
        )
    found = describe_weights_file(path)
    if found.get("has_top"):
        raise WeightsError(
            f"weights: Expected a no-top weights file for {what} (names end in _notop.h5 / no_top). "
            f"Received: {path.name}, which includes the classification top ({found['top_layer']})"
        )
    if found.get("format") not in ("legacy h5", "keras3 weights.h5"):
        raise WeightsError(
            f"weights: Expected a Keras weights file for {what}. "
            f"Received: {path.name}, an HDF5 file with no Keras weights layout ({found.get('format')})"
        )
    base = builder(weights=None, **kwargs)
    extra = _extra_keras3_entries(path, base) if found["format"] == "keras3 weights.h5" else []
    if extra:
        raise WeightsError(
            f"weights: Expected a no-top weights file for {what} (names end in _notop.h5 / no_top). "
            f"Received: {path.name}, which holds layers the no-top base lacks ({', '.join(extra[:4])}): "
            "it seems to include the classification top"
        )
    try:
        _load_weights(base, path, legacy=found["format"] == "legacy h5")
        if spec.builder.startswith("EfficientNet"):
            _efficientnet_imagenet_scaling(base)
    except Exception as e:
        n = found.get("layers")
        expected = sum(1 for layer in base.layers if layer.weights)
        got = f"a {found['format']} file with {n} weighted layers" if n else "a file of another layout"
        fits = _what_the_file_fits(spec, path, found, base)
        if n and n > expected and not fits:
            got += " (more than the no-top base has: does it include the classification top?)"
        if fits:
            got += f", {fits}"
        raise WeightsError(
            f"weights: Expected weights for {what} ({expected} weighted layers). "
            f"Received: {path.name}, {got}; Keras says: {_first_line(e)}"
        ) from None
    return base


def _extra_keras3_entries(path: Path, base) -> list[str]:
    """Entries of a Keras 3 weights file beyond every layer of ``base`` (a top), when the
    file otherwise holds all of the base's layers; [] when it does not (another model)."""
    import collections

    import h5py
    from keras.src.utils.naming import to_snake_case

    with h5py.File(path, "r") as f:
        keys = list(f["layers"].keys()) if "layers" in f else []
    prefix = lambda k: re.sub(r"_\d+$", "", k)
    have = collections.Counter(prefix(k) for k in keys if prefix(k) != "input_layer")
    want = collections.Counter(to_snake_case(type(layer).__name__) for layer in base.layers
                               if type(layer).__name__ != "InputLayer")
    extra = have - want
    if want - have or not extra or set(extra) - _TOP_CLASSES or sum(extra.values()) > 8:
        return []
    return sorted(extra.elements())


# What the classification tops of Keras applications are made of.
_TOP_CLASSES = {"dense", "dropout", "flatten", "reshape", "activation", "conv2d",
                "global_average_pooling2d", "global_max_pooling2d"}


# Layer names that tell the architecture of a legacy (Keras 2 applications) .h5 file.
_SIGNATURES = [
    ("MobileNet", r"conv_dw_1"), ("MobileNetV2", r"block_1_expand"), ("InceptionV3", r"mixed0"),
    ("EfficientNet", r"block1a_dwconv"), ("ResNet50V2", r"conv2_block1_preact_bn"),
    ("DenseNet", r"pool2_conv"), ("ResNet50", r"conv2_block1_0_conv"),
    ("MobileNetV3", r"expanded_conv(_\d+)?_project"), ("Xception", r"block1_conv1_bn"),
    ("VGG16", r"block1_conv1"),
]


def _file_shapes(path: Path) -> list[tuple]:
    """Shapes of every array in an HDF5 weights file, sorted (order-free comparison)."""
    import h5py

    shapes = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, obj: shapes.append(tuple(obj.shape)) if isinstance(obj, h5py.Dataset) else None)
    return sorted(shapes)


def _what_the_file_fits(spec: BaseSpec, path: Path, found: dict, base) -> str:
    """What a file that does not fit seems to hold: another architecture, another alpha."""
    import keras

    names = found.get("names") or []
    family = next((label for label, sig in _SIGNATURES if any(re.fullmatch(sig, n) for n in names)), None)
    same = family == spec.label or (family in ("EfficientNet", "MobileNetV3") and spec.label.startswith(family))
    if family and not same:
        return f"whose layer names are {family}'s ({', '.join(names[:3])}, …)"
    if not spec.alphas:
        return ""
    try:
        shapes = _file_shapes(path)
        for other in spec.alphas:
            candidate = getattr(keras.applications, spec.builder)(
                include_top=False, weights=None, input_shape=(spec.min_size, spec.min_size, 3), alpha=other)
            if sorted(tuple(w.shape) for w in candidate.weights) == shapes:
                return f"which holds {spec.label} weights for alpha {other:g}"
    except Exception:  # a best-effort hint only; the message stands without it
        return ""
    return ""


IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


def _efficientnet_imagenet_scaling(base) -> None:
    """Give file-loaded ImageNet EfficientNet weights the step Keras adds for weights="imagenet".

    Keras' EfficientNet divides by an extra sqrt(stddev) after its Normalization layer,
    but only when built with ``weights="imagenet"``. The same weights loaded from a
    file (recognised by the ImageNet mean in that layer) need it too; multiplying the
    layer's variance by stddev is exactly equivalent: (x - m) / sqrt(v * s).
    """
    import numpy as np

    norm = next((layer for layer in base.layers if type(layer).__name__ == "Normalization"), None)
    if norm is None or getattr(norm, "adapt_mean", None) is None:
        return
    mean, var = np.asarray(norm.adapt_mean).reshape(-1), np.asarray(norm.adapt_variance)
    if mean.shape == (3,) and np.allclose(mean, IMAGENET_MEAN_RGB, atol=1e-3):
        norm.adapt_variance.assign(var * np.reshape(IMAGENET_STDDEV_RGB, var.shape))
    norm.finalize_state()  # the layer computes from constants made here, not from its variables


def _load_weights(base, path: Path, legacy: bool):
    """Load by content, whatever the file is called (an upload may lose its suffix).

    Keras picks the reader from the name: ``*.weights.h5`` is Keras 3, other
    ``*.h5`` the legacy Keras 2 layout; a copy with the right name is used when
    the name says otherwise.
    """
    import warnings

    name = path.name.lower()
    with warnings.catch_warnings():  # Keras warns once per layer it cannot match; the error says it all
        warnings.simplefilter("ignore")
        _load_weights_named(base, path, legacy, name)


def _load_weights_named(base, path: Path, legacy: bool, name: str):
    import shutil
    import tempfile

    right = (name.endswith(".h5") and not name.endswith(".weights.h5")) if legacy else name.endswith(".weights.h5")
    if right:
        base.load_weights(str(path))
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d) / ("legacy.h5" if legacy else "upload.weights.h5")
        shutil.copyfile(path, tmp)
        base.load_weights(str(tmp))


def describe_weights_file(path: str | Path) -> dict:
    """What an HDF5 weights file holds: format, weighted layer count, a classification top."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "layer_names" in f.attrs or "model_weights" in f:
                g = f["model_weights"] if "model_weights" in f else f
                names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("layer_names", [])]
                weighted = [n for n in names if n in g and len(g[n].attrs.get("weight_names", [])) > 0]
                top = next((n for n in names if re.fullmatch(r"(predictions|fc1000|probs|logits|Logits)", n)), None)
                return {"format": "legacy h5", "layers": len(weighted), "has_top": bool(top), "top_layer": top,
                        "names": weighted}
            if "layers" in f:
                g = f["layers"]
                keys = list(g.keys())
                weighted = [k for k in keys if "vars" in g[k] and len(g[k]["vars"]) > 0]
                # Keras 3 names entries by layer class; bases have no Dense layer but their top
                top = next((k for k in keys if re.fullmatch(r"dense(_\d+)?|predictions", k)), None)
                return {"format": "keras3 weights.h5", "layers": len(weighted), "has_top": bool(top), "top_layer": top}
            return {"format": "unknown h5"}
    except OSError:
        return {"format": "unreadable"}


def unknown_cut(cut: str, layer_names: list[str], base_name: str) -> str:
    """The refusal of a cut at a layer the base does not have, with the closest names."""
    import difflib

    close = difflib.get_close_matches(cut, layer_names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"cut: Expected a layer name of {base_name}. Received: {cut!r}.{hint}"


def cut_base(base, cut: str | None):
    """The base truncated at layer ``cut`` (built on the base itself, before wrapping)."""
    import keras

    if not cut or cut == base.layers[-1].name:
        return base
    try:
        layer = base.get_layer(cut)
    except ValueError:
        from core.config import ConfigError

        raise ConfigError(unknown_cut(cut, [layer.name for layer in base.layers], base.name)) from None
    if isinstance(layer.output, (list, tuple)) or len(layer.output.shape) != 4:
        from core.config import ConfigError

        raise ConfigError(f"cut: Expected a layer with an image-shaped (H, W, C) output. "
                          f"Received: {cut} with output {layer.output.shape}")
    return keras.Model(base.input, layer.output, name=f"{base.name}_to_{cut}")


def suggested_cuts(base, name: str) -> list[tuple[str, tuple]]:
    """Named cut points with their output shapes, in order (e.g. mixed0 … mixed10).
    ``base``: a Keras base or its :class:`core.baseinfo.BaseInfo`."""
    from core.baseinfo import as_info

    layers = as_info(base).layers
    pattern = re.compile(get_spec(name).cut_pattern)
    return [(layer.name, layer.output_shape) for i, layer in enumerate(layers)
            if pattern.match(layer.name) or i == len(layers) - 1]


def _first_line(e: Exception) -> str:
    """The first sentence of an error (a line ending in ':' goes on with the next one), ≤ 300 chars."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text if len(text) <= 300 else text[:299] + "…"


def imagenet_problem(name: str, image_size: int, alpha: float) -> str | None:
    """None when ImageNet weights can be had for this base, else the reason (plain words)."""
    try:
        build_base(name, image_size, alpha, "imagenet")
    except WeightsError as e:
        return str(e)
    except Exception as e:  # an odd size or alpha without published weights, …
        return f"ImageNet weights for {name}: {_first_line(e)}"
    return None


def weights_file_problem(name: str, image_size: int, alpha: float, path: str) -> str | None:
    """None when the weights file fits this base, else what was expected and what was found."""
    try:
        build_base(name, image_size, alpha, path)
    except WeightsError as e:
        return str(e)
    return None


def cut_choices(base, name: str) -> list[tuple[str, tuple, bool]]:
    """Every layer the head can attach to, as (name, output shape, suggested): the
    suggested cut points first, in order, then every other image-shaped layer.
    ``base``: a Keras base or its :class:`core.baseinfo.BaseInfo`."""
    from core.baseinfo import as_info

    info = as_info(base)
    suggested = {n for n, _ in suggested_cuts(info, name)}
    rows = [(layer.name, tuple(layer.output_shape[1:]), layer.name in suggested) for layer in info.layers[1:]
            if layer.output_shape is not None and len(layer.output_shape) == 4]
    return [r for r in rows if r[2]] + [r for r in rows if not r[2]]
