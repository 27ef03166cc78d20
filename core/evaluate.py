"""Evaluating a trained model: confusion matrix, per-class metrics, predictions.

Images reach the model through the one decode path (``core.images``), at the
model's own input size, exactly as in training and in the exported file.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, predicted]`` as an ``(N, N)`` int array."""
    y_true = np.asarray(y_true, int).ravel()
    y_pred = np.asarray(y_pred, int).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels: Expected as many predictions as labels. Received: {y_pred.size} and {y_true.size}")
    cm = np.zeros((num_classes, num_classes), int)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_metrics(cm: np.ndarray, class_names: list[str]):
    """Precision, recall, F1 and support per class, from a confusion matrix."""
    import pandas as pd

    cm = np.asarray(cm, float)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return pd.DataFrame({
        "class": list(class_names),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(int),
    })


def confusion_frame(cm: np.ndarray, class_names: list[str]):
    """The confusion matrix as a DataFrame: rows are true classes, columns predicted."""
    import pandas as pd

    df = pd.DataFrame(np.asarray(cm, int), index=list(class_names), columns=list(class_names))
    df.index.name = "true"
    df.columns.name = "predicted"
    return df


@dataclass
class Evaluation:
    split: str
    class_names: list[str]
    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.probs) else np.zeros(0, int)

    @property
    def accuracy(self) -> float:
        return float((self.y_pred == self.y_true).mean()) if len(self.y_true) else float("nan")

    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.y_true, self.y_pred, len(self.class_names))

    def confusion_frame(self):
        return confusion_frame(self.confusion(), self.class_names)

    def per_class(self):
        return per_class_metrics(self.confusion(), self.class_names)

    def mistakes(self):
        """The misclassified files, most confident mistakes first."""
        import pandas as pd

        wrong = np.flatnonzero(self.y_pred != self.y_true)
        rows = [{
            "file": self.paths[i],
            "true": self.class_names[int(self.y_true[i])],
            "predicted": self.class_names[int(self.y_pred[i])],
            "probability": float(self.probs[i, self.y_pred[i]]),
        } for i in wrong]
        df = pd.DataFrame(rows, columns=["file", "true", "predicted", "probability"])
        return df.sort_values("probability", ascending=False, ignore_index=True)


def evaluate_model(model, dataset, class_names: list[str], split: str = "validation") -> Evaluation:
    """Predict every image of an :class:`~core.data.ImageDataset` and keep the probabilities."""
    from core.data import load_arrays
    from core.predict import model_image_size, predict_arrays

    size = model_image_size(model)
    x = load_arrays(list(dataset.paths), size)
    probs = predict_arrays(model, x) if len(x) else np.zeros((0, len(class_names)), np.float32)
    return Evaluation(split, list(class_names), list(dataset.paths), np.asarray(dataset.labels, int), np.asarray(probs))


def predict_uploads(model, class_names: list[str], files: list[tuple[str, bytes]], top: int = 3):
    """Predict named uploads: ``[(name, bytes)]`` → (rows, failures).

    ``rows``: one dict per image and rank (file, rank, class, probability);
    ``failures``: (name, reason) for files that are not usable images.
    """
    from core.images import ImageDecodeError, decode_image
    from core.predict import model_image_size, predict_arrays

    size = model_image_size(model)
    good, arrays, failures = [], [], []
    for name, data in files:
        try:
            arrays.append(decode_image(io.BytesIO(data), size))
            good.append(name)
        except ImageDecodeError as e:
            failures.append((name, e.reason))
    rows = []
    if arrays:
        probs = predict_arrays(model, np.stack(arrays))
        k = max(1, min(top, len(class_names)))
        for name, p in zip(good, probs):
            for rank, i in enumerate(np.argsort(-p)[:k], start=1):
                rows.append({"file": name, "rank": rank, "class": class_names[int(i)], "probability": float(p[i])})
    return rows, failures
