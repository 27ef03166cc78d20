"""Predicting classes of image files with a model, through the one decode path.

``python -m core predict`` and the Evaluate page both call :func:`predict_files`
and write the same CSV (:func:`predictions_csv`: ``path,class,probability``,
top-K rows per image, best first).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from core.images import ImageDecodeError, decode_image


CSV_COLUMNS = ["path", "class", "probability"]


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), best first
    probs: np.ndarray | None = field(default=None, repr=False)  # every class, in class order
    image: np.ndarray | None = field(default=None, repr=False)  # the decoded model input, uint8


def model_image_size(model) -> int:
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    return int(shape[1])


def predict_arrays(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities for a uint8 ``(N, S, S, 3)`` array."""
    out = []
    for i in range(0, len(images), batch_size):
        out.append(np.asarray(model.predict_on_batch(images[i:i + batch_size].astype(np.float32))))
    return np.concatenate(out) if out else np.zeros((0, int(model.output_shape[-1])), np.float32)


def predict_files(model, class_names: list[str], sources: list, top: int = 1, names: list[str] | None = None):
    """Return ``(predictions, failures)``; a file that cannot be decoded is a failure, not a crash.

    ``sources`` are paths, bytes or file objects; ``names`` (default: the
    sources as text) are what the predictions and failures are called.
    """
    size = model_image_size(model)
    names = [str(s) for s in sources] if names is None else list(names)
    good, arrays, failures = [], [], []
    for src, name in zip(sources, names):
        try:
            if isinstance(src, (bytes, bytearray)):
                src = io.BytesIO(src)
            arrays.append(decode_image(src, size))
            good.append(name)
        except ImageDecodeError as e:
            failures.append((name, e.reason))
    preds = []
    if arrays:
        images = np.stack(arrays)
        probs = predict_arrays(model, images)
        k = max(1, min(top, len(class_names)))
        for name, p, img in zip(good, probs, images):
            order = np.argsort(-p)[:k]
            preds.append(Prediction(name, [(class_names[i], float(p[i])) for i in order], np.asarray(p), img))
    return preds, failures


def write_predictions_csv(preds: list[Prediction], out) -> None:
    """``path,class,probability`` rows, top-K per image, best first."""
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for p in preds:
        for name, prob in p.top:
            w.writerow([p.path, name, f"{prob:.6f}"])


def predictions_csv(preds: list[Prediction]) -> str:
    buf = io.StringIO()
    write_predictions_csv(preds, buf)
    return buf.getvalue()
