"""TensorFlow Lite (LiteRT) export and inference.

The converted file takes the same input as ``model.keras``: raw RGB 0–255
float32 images of the trained size, preprocessing inside. Only TFLite builtin
ops are allowed, so the file runs in the plain LiteRT interpreter
(``ai-edge-litert``, where ``tf.lite.Interpreter`` is deprecated) on phones
and small boards, without the TensorFlow "flex" delegate.

Dynamic-range quantisation stores weights as 8-bit integers (about 4× smaller)
and computes in float; expect probabilities within about a percent of the
float model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FLOAT_NAME = "model.tflite"
QUANT_NAME = "model_quant.tflite"


class TFLiteError(Exception):
    """Conversion or LiteRT inference failed; the message says why."""


def convert(model, path: str | Path, quantize: bool = False) -> Path:
    """Write ``model`` as a ``.tflite`` file (float, or dynamic-range quantised)."""
    import tensorflow as tf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize:
        kwargs["optimizations"] = [tf.lite.Optimize.DEFAULT]
    tmp = path.with_name(path.stem + ".tmp.tflite")
    try:
        model.export(str(tmp), format="litert", verbose=False, **kwargs)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise TFLiteError(f"tflite: cannot convert {model.name} with builtin ops only: {first}") from None
    tmp.replace(path)
    return path


class LiteRTModel:
    """A ``.tflite`` file in the LiteRT interpreter, predicting like a Keras model."""

    def __init__(self, source: str | Path | bytes):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise TFLiteError("tflite: Expected the ai-edge-litert package to run .tflite files "
                              "(pip install ai-edge-litert). Received: not installed") from None
        try:
            if isinstance(source, (bytes, bytearray)):
                self.interpreter = Interpreter(model_content=bytes(source))
            else:
                self.interpreter = Interpreter(model_path=str(source))
        except (ValueError, RuntimeError) as e:
            raise TFLiteError(f"tflite: cannot open the model: {str(e).splitlines()[0][:300]}") from None
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = None

    @property
    def input_shape(self) -> tuple:
        return (None,) + tuple(int(d) for d in self._input["shape"][1:])

    @property
    def image_size(self) -> int:
        return int(self._input["shape"][1])

    def predict(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities for ``(N, S, S, 3)`` raw 0–255 images."""
        images = np.asarray(images, np.float32)
        out = []
        for i in range(0, len(images), batch_size):
            chunk = images[i:i + batch_size]
            if self._batch != len(chunk):
                self.interpreter.resize_tensor_input(self._input["index"], list(chunk.shape))
                self.interpreter.allocate_tensors()
                self._batch = len(chunk)
            self.interpreter.set_tensor(self._input["index"], chunk)
            self.interpreter.invoke()
            out.append(np.array(self.interpreter.get_tensor(self._output["index"])))
        return np.concatenate(out) if out else np.zeros((0, int(self._output["shape"][-1])), np.float32)


def compare(model, tflite_source, images: np.ndarray) -> dict:
    """How a ``.tflite`` file agrees with the Keras model on ``images``.

    Returns ``{"images", "max_abs_diff", "top_agree"}``: the largest absolute
    difference of any class probability, and the fraction of images whose top
    class is the same.
    """
    from core.predict import predict_arrays

    if not len(images):
        return {"images": 0, "max_abs_diff": None, "top_agree": None}
    k = predict_arrays(model, images)
    t = LiteRTModel(tflite_source).predict(images)
    return {
        "images": int(len(images)),
        "max_abs_diff": float(np.abs(k - t).max()),
        "top_agree": float((k.argmax(1) == t.argmax(1)).mean()),
    }
