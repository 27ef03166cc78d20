"""core.experiments: background runs, progress records, dropout comparison, plans."""
import threading
import time

import pytest

from core.config import ConfigError, ExperimentConfig
from core.experiments import (BackgroundRun, CompareResult, Progress, ProgressListener, compare_curves,
                              compare_table, experiment_lines, parse_rates)
from core.train import EpochEvent, BatchEvent, RunResult, TrainPlan

TINY = dict(base="mobilenet", alpha=0.25, image_size=32, weights="none", dense=[16], epochs=2, batch_size=16)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    import os

    old = os.environ.get("TRANSFER_LAB_CACHE")
    os.environ["TRANSFER_LAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("TRANSFER_LAB_CACHE", None)
    else:
        os.environ["TRANSFER_LAB_CACHE"] = old


@pytest.fixture(scope="module")
def sample():
    from core.data import load_dataset, make_sample_dataset

    return load_dataset(make_sample_dataset(per_class=12, size=32))


def _result(rate, accs, val_accs):
    cfg = ExperimentConfig(weights="none", dropout=rate)
    hist = [{"epoch": i + 1, "loss": 1.0 / (i + 1), "accuracy": a, "val_loss": 1.2 / (i + 1), "val_accuracy": v}
            for i, (a, v) in enumerate(zip(accs, val_accs))]
    best = max(range(len(val_accs)), key=lambda i: val_accs[i])
    return RunResult("r", cfg, ["a", "b"], hist, best + 1, val_accs[best], "completed", "features")


# -- rates and tables (no TensorFlow) ------------------------------------------------------------

def test_parse_rates():
    assert parse_rates("0, 0.2, 0.5, 0.8") == [0.0, 0.2, 0.5, 0.8]
    assert parse_rates("0.1;0.3") == [0.1, 0.3]
    assert parse_rates([0, 0.5]) == [0.0, 0.5]


@pytest.mark.parametrize("text, expected", [
    ("0, 1.0", "0 <= rate < 1. Received: 1.0"),
    ("-0.1", "Received: -0.1"),
    ("0, abc", "Received: 'abc'"),
    ("", "Received: nothing"),
    ("0.2, 0.2", "each rate once"),
])
def test_parse_rates_refuses_with_expected_and_received(text, expected):
    with pytest.raises(ConfigError) as e:
        parse_rates(text)
    assert expected in str(e.value) and "Expected" in str(e.value)


def test_compare_table_and_curves():
    runs = [_result(0.0, [0.9, 1.0], [0.7, 0.6]), _result(0.5, [0.7, 0.8], [0.75, 0.8])]
    table = compare_table(runs)
    assert table["dropout"].tolist() == [0.0, 0.5]
    assert table["best val accuracy"].tolist() == [0.7, 0.8]
    assert table["epoch of best"].tolist() == [1, 2]
    assert table["final train–val gap"].tolist() == pytest.approx([0.4, 0.0])
    curves = compare_curves(runs)
    assert curves["run"].unique().tolist() == ["dropout 0", "dropout 0.5"]
    assert len(curves) == 4
    assert CompareResult([0.0, 0.5], runs).best().config.dropout == 0.5


# -- the progress record and the background handle ------------------------------------------------

def test_progress_listener_driven_by_hand():
    p, lock = Progress(), threading.Lock()
    listener = ProgressListener(p, lock)
    cfg = ExperimentConfig(epochs=4)
    listener.on_train_begin(TrainPlan("r", cfg, "features", 4, 10, 2, ["a", "b"], {}))
    listener.on_batch_end(BatchEvent("r", "features", 0, 1, 2))
    assert p.status == "features" and "computing base features" in p.text()
    assert 0 < p.fraction() < 0.1
    listener.on_batch_end(BatchEvent("r", "train", 1, 1, 2))
    listener.on_epoch_end(EpochEvent("r", "train", 1, 4, {"epoch": 1, "loss": 0.5, "val_accuracy": 0.6}))
    listener.on_epoch_end(EpochEvent("r", "train", 2, 4, {"epoch": 2, "loss": 0.4, "val_accuracy": 0.7}))
    assert p.status == "training" and len(p.history) == 2
    assert p.fraction() == pytest.approx(0.1 + 0.9 * 2.5 / 4)
    assert "epoch 3/4" in p.text()


def test_background_run_keeps_result_and_stops():
    started = threading.Event()

    def target(listeners, stop):
        started.set()
        while not stop.is_set():
            time.sleep(0.01)
        return "partial"

    run = BackgroundRun(target).start()
    assert started.wait(5) and run.running
    run.request_stop()
    assert run.join(5)
    assert run.result == "partial" and run.snapshot().status == "stopped" and not run.running


def test_background_run_reports_errors_as_text():
    def target(listeners, stop):
        raise ConfigError("dropout: Expected a rate with 0 <= rate < 1. Received: 1.0")

    run = BackgroundRun(target).start()
    run.join(5)
    p = run.snapshot()
    assert p.status == "error" and "Received: 1.0" in p.message and run.result is None


def test_experiment_lines_labels_from_scratch():
    result = _result(0.2, [0.9], [0.8])
    lines = dict(experiment_lines(ExperimentConfig(weights="none"), None, None, BackgroundRun.finished(result)))
    assert lines["Dataset"] == "not chosen yet"
    assert "weights none (from scratch)" in lines["Base"]
    assert lines["Last run"].startswith("none (from scratch): completed after 1 epoch(s)")


# -- with TensorFlow: tiny real runs ----------------------------------------------------------------

def test_lock_param_counts_match_the_built_model():
    from core.bases import build_base
    from core.experiments import layer_rows, lock_param_counts
    from core.freeze import param_counts
    from core.model import build_model

    base = build_base("mobilenet", 32, 0.25, "none")
    for freeze, cut in (("all", None), ("top:10", None), ("up-to:conv_pw_5_relu", "conv_pw_9_relu"), ("none", None)):
        cfg = ExperimentConfig(**{**TINY, "freeze": freeze, "cut": cut})
        plan = lock_param_counts(base, cfg, 3)
        built = param_counts(build_model(cfg, 3, base=build_base("mobilenet", 32, 0.25, "none")).model)
        assert (plan["trainable"], plan["locked"]) == (built["trainable"], built["locked"]), freeze
    rows = layer_rows(base, ExperimentConfig(**{**TINY, "freeze": "top:10", "cut": "conv_pw_9_relu"}))
    states = {r["state"] for r in rows}
    assert {"trainable", "locked", "cut off", "no weights"} <= states
    assert len(base.layers) == len(rows)  # un-mutated: still the whole base
    assert all(layer.trainable for layer in base.layers)


def test_start_training_runs_in_background_and_saves(sample):
    from pathlib import Path

    from core.experiments import start_training

    run = start_training(ExperimentConfig(**TINY), sample)
    assert run.join(120)
    p = run.snapshot()
    assert p.status == "done", p.message
    assert len(p.history) == 2 and p.fraction() == 1.0
    result = run.result
    assert result.config.weights_label() == "none (from scratch)"
    assert (Path(result.run_dir) / "model.keras").is_file()


def test_start_training_refuses_bad_config_before_any_thread(sample):
    from core.experiments import start_training

    with pytest.raises(ConfigError, match="dropout: Expected"):
        start_training(ExperimentConfig(**{**TINY, "dropout": 1.0}), sample)


def test_compare_same_split_and_seed(sample):
    from core.experiments import start_compare

    run = start_compare(ExperimentConfig(**{**TINY, "epochs": 1}), sample, "0, 0.5")
    assert run.join(180)
    result = run.result
    assert run.snapshot().status == "done"
    assert [r.config.dropout for r in result.runs] == [0.0, 0.5]
    assert {r.config.seed for r in result.runs} == {0}
    assert len(result.table()) == 2 and len(run.snapshot().finished) == 2
