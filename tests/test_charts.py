"""core.charts: DataFrames in, plotly Figures out (no TensorFlow, no Streamlit)."""
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core import charts
from core.evaluate import confusion_frame


def _history(n=3):
    return pd.DataFrame({"epoch": range(1, n + 1), "loss": [1.0, 0.6, 0.4][:n], "accuracy": [0.5, 0.7, 0.9][:n],
                         "val_loss": [1.1, 0.8, 0.7][:n], "val_accuracy": [0.4, 0.6, 0.8][:n]})


def test_history_figure_has_train_and_validation_curves():
    fig = charts.history_figure(_history(), "accuracy", epochs=10)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["train", "validation"]
    assert list(fig.data[1].y) == [0.4, 0.6, 0.8]
    assert tuple(fig.layout.xaxis.range) == (0.5, 10.5)
    assert fig.layout.yaxis.tickformat == ".0%"


def test_history_figure_empty_while_no_epoch_finished():
    fig = charts.history_figure(pd.DataFrame(columns=["epoch", "loss", "val_loss"]), "loss", epochs=5)
    assert len(fig.data) == 0
    assert fig.layout.title.text == "Loss"


def test_history_figure_marks_the_best_epoch_and_phase_boundaries():
    h = _history()
    h["phase"] = ["head", "head", "fine-tune"]
    fig = charts.history_figure(h, "accuracy", epochs=3, best_epoch=2, best_note="best epoch (weights kept)")
    assert [t.name for t in fig.data] == ["train", "validation", "best epoch (weights kept)"]
    assert (list(fig.data[2].x), list(fig.data[2].y)) == ([2], [0.6])  # ringed on the validation curve
    lines = sorted(shape.x0 for shape in fig.layout.shapes)
    assert lines == [2, 2.5]  # the best epoch, and the boundary before the first fine-tune epoch
    assert [a.text for a in fig.layout.annotations] == ["fine-tune"]
    assert charts.phase_boundaries(_history()) == []
    assert len(charts.history_figure(h, "loss", best_epoch=9).data) == 2  # an epoch not shown is not marked


def test_compare_figure_one_line_per_run():
    a, b = _history(), _history()
    a["run"], b["run"] = "dropout 0", "dropout 0.5"
    fig = charts.compare_figure(pd.concat([a, b]), "val_accuracy")
    assert [t.name for t in fig.data] == ["dropout 0", "dropout 0.5"]
    assert list(fig.data[0].x) == [1, 2, 3]


def test_class_balance_grouped_by_split():
    counts = pd.DataFrame({"class": ["a", "b", "a", "b"], "split": ["train", "train", "validation", "validation"],
                           "images": [8, 6, 2, 2]})
    fig = charts.class_balance_figure(counts)
    assert [t.name for t in fig.data] == ["train", "validation"]
    assert list(fig.data[0].y) == [8, 6]
    assert fig.layout.barmode == "group"


def test_confusion_figure_shows_counts_true_by_predicted():
    cm = confusion_frame(np.array([[3, 1], [0, 4]]), ["cat", "dog"])
    fig = charts.confusion_figure(cm)
    heat = fig.data[0]
    assert list(heat.x) == ["cat", "dog"] and list(heat.y) == ["cat", "dog"]
    assert heat.z.tolist() == [[3, 1], [0, 4]]
    assert fig.layout.xaxis.title.text == "predicted"


def test_probability_figure():
    fig = charts.probability_figure(pd.DataFrame({"class": ["a", "b"], "probability": [0.9, 0.1]}))
    assert list(fig.data[0].text) == ["90.0%", "10.0%"]


def test_only_charts_imports_plotly():
    import pathlib

    core = pathlib.Path(__file__).resolve().parents[1] / "core"
    users = sorted(p.name for p in core.glob("*.py") if "plotly" in p.read_text() and p.name != "charts.py")
    assert users == []
