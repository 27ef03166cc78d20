"""core.evaluate: confusion matrix, per-class metrics, evaluating and predicting."""
import io

import numpy as np
import pytest
from PIL import Image

from core.evaluate import Evaluation, confusion_matrix, evaluate_model, per_class_metrics, predict_uploads


def test_confusion_matrix_counts_true_by_predicted():
    cm = confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_confusion_matrix_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="Expected as many predictions as labels"):
        confusion_matrix([0, 1], [0], 2)


def test_per_class_metrics():
    df = per_class_metrics(np.array([[3, 1], [0, 4]]), ["cat", "dog"])
    assert df["class"].tolist() == ["cat", "dog"]
    assert df["precision"].tolist() == pytest.approx([1.0, 0.8])
    assert df["recall"].tolist() == pytest.approx([0.75, 1.0])
    assert df["support"].tolist() == [4, 4]
    # a class never predicted has precision 0, not NaN
    empty = per_class_metrics(np.array([[2, 0], [2, 0]]), ["a", "b"])
    assert empty["precision"].tolist() == pytest.approx([0.5, 0.0])


def test_evaluation_accuracy_and_mistakes():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]])
    ev = Evaluation("validation", ["a", "b"], ["x.png", "y.png", "z.png"], np.array([0, 1, 1]), probs)
    assert ev.accuracy == pytest.approx(2 / 3)
    assert ev.confusion().tolist() == [[1, 0], [1, 1]]
    m = ev.mistakes()
    assert m.to_dict("records") == [{"file": "z.png", "true": "b", "predicted": "a", "probability": 0.8}]
    assert ev.confusion_frame().loc["b", "a"] == 1


class _Constant:
    """A stand-in model: fixed input size, always the same probabilities."""

    input_shape = (None, 32, 32, 3)
    output_shape = (None, 2)

    def predict_on_batch(self, x):
        assert x.dtype == np.float32 and x.shape[1:] == (32, 32, 3)
        return np.tile([[0.25, 0.75]], (len(x), 1))


def _png(colour=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "PNG")
    return buf.getvalue()


def test_predict_uploads_reports_non_images_by_name():
    rows, failures = predict_uploads(_Constant(), ["cat", "dog"], [("a.png", _png()), ("notes.txt", b"hello")], top=2)
    assert [(r["file"], r["rank"], r["class"]) for r in rows] == [("a.png", 1, "dog"), ("a.png", 2, "cat")]
    assert rows[0]["probability"] == pytest.approx(0.75)
    assert failures and failures[0][0] == "notes.txt" and "not an image" in failures[0][1]


def test_evaluate_model_on_a_dataset(tmp_path):
    from core.data import ImageDataset

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        p.write_bytes(_png())
        paths.append(str(p))
    ds = ImageDataset(paths, np.array([1, 1, 0], np.int32), ["cat", "dog"])
    ev = evaluate_model(_Constant(), ds, ["cat", "dog"])
    assert ev.y_pred.tolist() == [1, 1, 1]
    assert ev.accuracy == pytest.approx(2 / 3)
    assert ev.per_class()["support"].tolist() == [1, 2]
