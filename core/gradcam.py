"""Where the model looked: Grad-CAM heat maps for the predicted class.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of the last
convolutional feature map by the mean gradient of the class score over it,
sums the weighted channels and keeps the positive part: the regions whose
features raised the score. The class score is the logit (the output layer
without its softmax), so a confident prediction still has gradients.

A Transfer Lab model is a chain: input → preprocessing → base (a nested
Functional model, possibly cut) → head. The last layer with a 4-D output is
the base itself, so the map is the base's output. Models from elsewhere (an
uploaded ``.keras``) may be flat graphs; a sub-model from the input to that
layer's output and the output layer's input is used then. Where neither works,
or the map is 1×1, :class:`GradCamUnavailable` says why.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_NOT_FEATURES = ("InputLayer", "Rescaling", "Normalization", "Resizing", "CenterCrop")


class GradCamUnavailable(Exception):
    """No usable convolutional map for this model; the message says why."""


@dataclass
class CamTarget:
    index: int  # position of the layer among the model's top-level layers (InputLayer excluded)
    inner: str | None  # a layer inside that (nested) model whose output is the map, or None for its own output
    name: str  # readable: "resnet50_to_conv2_block3_out" or "mobilenet / conv_pw_13_relu"
    shape: tuple  # (H, W, C) of the map


def _layers(model) -> list:
    return [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]


def _shape(tensor) -> tuple | None:
    if isinstance(tensor, (list, tuple)):
        return None
    try:
        return tuple(tensor.shape)
    except AttributeError:
        return None


def _is_conv(layer) -> bool:
    name = type(layer).__name__
    if "Conv" in name:
        return True
    return hasattr(layer, "layers") and any(_is_conv(inner) for inner in layer.layers)


def find_target(model) -> CamTarget:
    """The last convolutional map of ``model``; raises :class:`GradCamUnavailable`."""
    layers = _layers(model)
    seen_conv = [False] * len(layers)
    conv = False
    for i, layer in enumerate(layers):
        conv = conv or _is_conv(layer)
        seen_conv[i] = conv
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if not seen_conv[i] or type(layer).__name__ in _NOT_FEATURES:
            continue
        shape = _shape(getattr(layer, "output", None))
        if shape is not None and len(shape) == 4:
            return _checked(CamTarget(i, None, layer.name, tuple(shape[1:])))
        if hasattr(layer, "layers") and hasattr(layer, "inputs"):  # a nested model that pools inside
            for inner in reversed(layer.layers):
                s = _shape(getattr(inner, "output", None))
                if s is not None and len(s) == 4 and type(inner).__name__ not in _NOT_FEATURES and _is_conv(layer):
                    return _checked(CamTarget(i, inner.name, f"{layer.name} / {inner.name}", tuple(s[1:])))
    raise GradCamUnavailable("no convolutional feature map found in the model (no layer with an (H, W, C) output "
                             "after a convolution)")


def _checked(target: CamTarget) -> CamTarget:
    h, w = target.shape[0], target.shape[1]
    if h is None or w is None:
        raise GradCamUnavailable(f"the feature map of {target.name} has no fixed size")
    if h * w <= 1:
        raise GradCamUnavailable(f"the last convolutional map ({target.name}) is 1×1 at this input size: it keeps "
                                 "no place to show; a larger image size or a cut at an earlier layer keeps one")
    return target


class GradCam:
    """Heat maps for one model; build once, call :meth:`heatmaps` for batches."""

    def __init__(self, model):
        import keras

        self.model = model
        self.target = find_target(model)
        layers = _layers(model)
        self._layers = layers
        last = layers[-1]
        # Grad-CAM on the logit: a Dense output's softmax is undone by using its pre-activation.
        act = getattr(getattr(last, "activation", None), "__name__", "")
        self._logit_layer = last if type(last).__name__ == "Dense" and act in ("softmax", "sigmoid") else None
        t = self.target
        self._inner_model = None
        if t.inner is not None:
            nested = layers[t.index]
            self._inner_model = keras.Model(nested.inputs, [nested.get_layer(t.inner).output, nested.output])
        self._mode = "chain"
        self._flat = None

    # -- the forward passes ------------------------------------------------------------------
    def _chain_forward(self, x):
        """Call the top-level layers in order; returns (map, output-before-softmax, probabilities)."""
        conv = None
        n = len(self._layers)
        for i, layer in enumerate(self._layers):
            if i == n - 1 and self._logit_layer is not None:
                pre = x
                logits = _dense_logits(layer, pre)
                return conv, logits, layer(pre, training=False)
            if i == self.target.index and self._inner_model is not None:
                conv, x = self._inner_model(x, training=False)
            else:
                x = layer(x, training=False)
                if i == self.target.index:
                    conv = x
        return conv, x, x

    def _flat_forward(self, x):
        import keras

        if self._flat is None:
            layer = self._layers[self.target.index]
            last = self._layers[-1]
            out = last.input if self._logit_layer is not None else self.model.output
            self._flat = keras.Model(self.model.inputs, [layer.output, out])
        conv, pre = self._flat(x, training=False)
        if self._logit_layer is not None:
            return conv, _dense_logits(self._logit_layer, pre), self._logit_layer(pre, training=False)
        return conv, pre, pre

    def _forward(self, x):
        return self._chain_forward(x) if self._mode == "chain" else self._flat_forward(x)

    def _check_forward(self, x) -> None:
        """The chain walk must reproduce the model's own output; else use the flat sub-model."""
        try:
            _, _, probs = self._chain_forward(x)
            ok = np.allclose(np.asarray(probs), np.asarray(self.model(x, training=False)), atol=1e-4)
        except Exception:
            ok = False
        if ok:
            return
        self._mode = "flat"
        try:
            _, _, probs = self._flat_forward(x)
            ok = np.allclose(np.asarray(probs), np.asarray(self.model(x, training=False)), atol=1e-4)
        except Exception as e:
            raise GradCamUnavailable(f"the map of {self.target.name} cannot be reached from the model's input "
                                     f"({type(e).__name__})") from None
        if not ok:
            raise GradCamUnavailable(f"the map of {self.target.name} cannot be reached from the model's input")

    # -- the maps -------------------------------------------------------------------------------
    def heatmaps(self, images: np.ndarray, class_index=None) -> tuple[np.ndarray, np.ndarray]:
        """``(heat, probs)``: heat ``(N, H, W)`` in [0, 1] at the map's resolution, for the
        predicted class (or ``class_index``: one int or one per image); probs ``(N, classes)``."""
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(images, np.float32))
        if self._mode == "chain" and not getattr(self, "_checked", False):
            self._check_forward(x[:1])
            self._checked = True
        with tf.GradientTape() as tape:
            tape.watch(x)
            conv, logits, probs = self._forward(x)
            idx = np.asarray(probs).argmax(axis=1) if class_index is None else np.broadcast_to(class_index, (len(x),))
            score = tf.gather(logits, tf.constant(idx, tf.int32), axis=1, batch_dims=1)
        grads = tape.gradient(score, conv)
        if grads is None:
            raise GradCamUnavailable(f"no gradient reaches the map of {self.target.name}")
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)).numpy()
        top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            heat = np.where(top > 0, cam / np.where(top > 0, top, 1), 0.0)
        return np.clip(heat, 0.0, 1.0).astype(np.float32), np.asarray(probs)


def _dense_logits(layer, x):
    from keras import ops

    z = ops.matmul(x, layer.kernel)
    return z + layer.bias if getattr(layer, "bias", None) is not None else z


def gradcam_or_reason(model) -> tuple[GradCam | None, str | None]:
    """A :class:`GradCam` for ``model``, or ``(None, reason)`` when it has no usable map."""
    try:
        return GradCam(model), None
    except GradCamUnavailable as e:
        return None, str(e)


# -- drawing -----------------------------------------------------------------------------------------

def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One ``(h, w)`` map resized (bilinear) to ``size`` = (height, width), still in [0, 1]."""
    from PIL import Image

    img = Image.fromarray(np.asarray(heat, np.float32), mode="F").resize((size[1], size[0]), Image.BILINEAR)
    return np.clip(np.asarray(img), 0.0, 1.0)


def colormap(values: np.ndarray) -> np.ndarray:
    """A blue → green → yellow → red ramp ("jet") for values in [0, 1], as uint8 RGB."""
    v = np.clip(np.asarray(values, np.float32), 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * v - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The image with the heat map blended over it (weak heat fades into the image)."""
    image = np.asarray(image, np.uint8)
    up = upsample(heat, image.shape[:2])
    colour = colormap(up).astype(np.float32)
    a = (alpha * up)[..., None]  # no heat, no tint: the image shows through
    return np.clip(image.astype(np.float32) * (1 - a) + colour * a, 0, 255).astype(np.uint8)
