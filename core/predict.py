"""Predicting classes of image files with a model, through the one decode path."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.images import ImageDecodeError, decode_image


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class name, probability), best first


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


def predict_files(model, class_names: list[str], sources: list, top: int = 1):
    """Return ``(predictions, failures)``; a file that cannot be decoded is a failure, not a crash."""
    size = model_image_size(model)
    good, arrays, failures = [], [], []
    for src in sources:
        try:
            arrays.append(decode_image(src, size))
            good.append(src)
        except ImageDecodeError as e:
            failures.append((str(src), e.reason))
    preds = []
    if arrays:
        probs = predict_arrays(model, np.stack(arrays))
        k = max(1, min(top, len(class_names)))
        for src, p in zip(good, probs):
            order = np.argsort(-p)[:k]
            preds.append(Prediction(str(src), [(class_names[i], float(p[i])) for i in order]))
    return preds, failures
