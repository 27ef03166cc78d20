"""Two-phase fine-tuning, continuing a run, best-epoch restore, reproducibility, strategies."""
import csv
import io
import json
import re

import numpy as np
import pytest

from core.data import load_arrays
from core.export import load_model
from core.freeze import BATCHNORM_TYPES
from core.train import TrainingListener, continue_run, train
from tests.conftest import learner_config, tiny_config

TOP = 12  # top layers of ResNet50 unlocked for fine-tuning: conv5_block3 (3 convs, 3 BN, …)


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """A 'pretrained' ResNet50 weights file (random weights, saved here): its BatchNorm stays locked."""
    import keras

    keras.utils.set_random_seed(2)
    base = keras.applications.ResNet50(include_top=False, input_shape=(32, 32, 3), weights=None)
    path = tmp_path_factory.mktemp("resnet") / "resnet50_32_no_top.weights.h5"
    base.save_weights(path)
    return str(path)


class Events(TrainingListener):
    def __init__(self):
        self.plans, self.epochs = [], []

    def on_train_begin(self, plan):
        self.plans.append(plan)

    def on_epoch_end(self, e):
        self.epochs.append(e)


def _layer_of(path: str) -> str:
    return path.split("/")[-2]


def test_fine_tuning_unlocks_exactly_the_top_non_batchnorm_layers(colour_data_session, resnet_file, tmp_path, monkeypatch):
    import keras

    fits = []
    original = keras.Model.fit

    def spy(self, *a, **k):
        before = {v.path: np.array(v) for v in self.weights}
        out = original(self, *a, **k)
        fits.append((self.name, before, {v.path: np.array(v) for v in self.weights}))
        return out

    monkeypatch.setattr(keras.Model, "fit", spy)
    cfg = learner_config(weights=resnet_file, epochs=2, lr=1e-3, fine_tune_layers=TOP, fine_tune_epochs=2)
    ev = Events()
    r = train(cfg, colour_data_session, listeners=[ev], run_dir=tmp_path / "run")

    # phase 1 on cached features (the head alone), phase 2 on images through the joined model
    assert [name for name, _, _ in fits] == ["head_on_features", r.model.name]
    assert [p["phase"] for p in r.phases] == ["head", "fine-tune"] and r.phases[0]["path"] == "features"
    assert [(h["epoch"], h["phase"]) for h in r.history] == [(1, "head"), (2, "head"), (3, "fine-tune"), (4, "fine-tune")]
    assert [h["lr"] for h in r.history] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert [(e.phase, e.epoch, e.epochs) for e in ev.epochs] == [("head", 1, 4), ("head", 2, 4), ("fine-tune", 3, 4), ("fine-tune", 4, 4)]
    assert ev.epochs[-1].lr == pytest.approx(1e-4)
    assert [p["phase"] for p in ev.plans[0].phases] == ["head", "fine-tune"]

    _, before, after = fits[1]
    base = next(layer for layer in r.model.layers if isinstance(layer, keras.Model))
    names = [layer.name for layer in base.layers]
    want = {layer.name for layer in base.layers[-TOP:] if layer.weights and type(layer).__name__ not in BATCHNORM_TYPES}
    assert len(want) == 3  # conv5_block3_{1,2,3}_conv
    changed = {_layer_of(p) for p in before if not np.array_equal(before[p], after[p])}
    assert {n for n in changed if n in names} == want  # BatchNorm and every lower layer untouched
    assert {"head_dense_1", "predictions"} <= changed

    # history.csv: both phases, phase and lr columns; the saved model predicts as the run's
    rows = list(csv.DictReader(io.StringIO((tmp_path / "run" / "history.csv").read_text())))
    assert [(x["epoch"], x["phase"]) for x in rows] == [("1", "head"), ("2", "head"), ("3", "fine-tune"), ("4", "fine-tune")]
    assert float(rows[2]["lr"]) == pytest.approx(1e-4)
    x = load_arrays(colour_data_session.validation.paths, 32).astype(np.float32)
    model, _ = load_model(tmp_path / "run" / "model.keras")
    np.testing.assert_allclose(model.predict(x, verbose=0), r.model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_the_model_kept_is_the_best_epoch_by_the_monitored_metric(colour_data_session):
    data = colour_data_session
    x = load_arrays(data.validation.paths, 32).astype(np.float32)
    for monitor in ("val_loss", "val_accuracy"):
        r = train(learner_config(epochs=6, lr=0.05, optimizer="sgd", monitor=monitor), data)
        values = [h[monitor] for h in r.history]
        best = int(np.argmin(values) if monitor == "val_loss" else np.argmax(values)) + 1
        assert r.best_epoch == best and r.best_value == pytest.approx(values[best - 1])
        acc = float(np.mean(r.model.predict(x, verbose=0).argmax(1) == data.validation.labels))
        assert acc == pytest.approx(r.history[best - 1]["val_accuracy"]) == pytest.approx(r.best_val_accuracy)


def test_early_stopping_on_val_accuracy_restores_the_best_weights(colour_data_session):
    r = train(learner_config(epochs=30, lr=0.05, optimizer="sgd", early_stopping=2, monitor="val_accuracy"),
              colour_data_session)
    accs = [h["val_accuracy"] for h in r.history]
    assert r.status == "early-stopped" and len(accs) < 30
    assert max(accs[-2:]) <= max(accs[:-2])  # two epochs without a better val_accuracy
    assert r.best_epoch == int(np.argmax(accs)) + 1


def test_a_run_can_be_continued_and_fine_tuned_from_its_folder(colour_data_session, resnet_file, tmp_path):
    run = tmp_path / "run"
    first = train(learner_config(weights=resnet_file, epochs=2, lr=1e-3), colour_data_session, run_dir=run)
    ev = Events()
    r = continue_run(run, epochs=1, fine_tune_layers=TOP, fine_tune_epochs=1, listeners=[ev])  # data from run.json
    assert r.run_id == first.run_id
    assert [(h["epoch"], h["phase"]) for h in r.history] == [(1, "head"), (2, "head"), (3, "head"), (4, "fine-tune")]
    assert r.history[:2] == first.history[:2]
    assert ev.plans[0].initial_epoch == 2 and ev.plans[0].epochs == 4
    assert [e.epoch for e in ev.epochs] == [3, 4]
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["epochs"], cfg["fine_tune_layers"], cfg["fine_tune_epochs"]) == (3, TOP, 1)
    rows = list(csv.DictReader(io.StringIO((run / "history.csv").read_text())))
    assert [x["phase"] for x in rows] == ["head", "head", "head", "fine-tune"]
    info = json.loads((run / "run.json").read_text())
    assert info["epochs_finished"] == 4 and [p["phase"] for p in info["phases"]] == ["head", "head", "fine-tune"]
    x = load_arrays(colour_data_session.validation.paths, 32).astype(np.float32)
    model, _ = load_model(run / "model.keras")
    np.testing.assert_allclose(model.predict(x, verbose=0), r.model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_continue_refuses_nothing_to_do_and_a_missing_run(tmp_path):
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="Expected a run folder"):
        continue_run(tmp_path / "nowhere", epochs=1)
    (tmp_path / "run").mkdir()
    tiny_config().save(tmp_path / "run" / "config.json")
    with pytest.raises(ConfigError, match="Expected more epochs or a fine-tuning phase"):
        continue_run(tmp_path / "run")
    with pytest.raises(ConfigError, match="epochs: Expected 0 or more"):
        continue_run(tmp_path / "run", epochs=-1)


def test_fine_tuning_more_layers_than_the_base_has_is_refused_before_anything_runs(colour_data_session, tmp_path):
    from core.bases import build_base
    from core.config import ConfigError
    from core.experiments import launch_problems

    n = len(build_base("mobilenet", 32, 0.25, "none").layers)
    said = f"fine_tune_layers: Expected 0 to {n} (the layers of MobileNet). Received: 500"
    cfg = tiny_config(epochs=1, fine_tune_layers=500, fine_tune_epochs=1)
    assert said in launch_problems(cfg)  # the Train page and the CLI's checks
    assert not any("fine_tune" in p for p in launch_problems(tiny_config(fine_tune_layers=n, fine_tune_epochs=1)))
    cut = launch_problems(tiny_config(cut="conv_pw_3_relu", fine_tune_layers=n, fine_tune_epochs=1))
    assert [p for p in cut if "fine_tune" in p] == [
        f"fine_tune_layers: Expected 0 to 23 (the layers of MobileNet up to the cut at conv_pw_3_relu). Received: {n}"]
    ev = Events()
    with pytest.raises(ConfigError, match=re.escape(said)):
        train(cfg, colour_data_session, listeners=[ev], run_dir=tmp_path / "refused")
    assert ev.plans == [] and not (tmp_path / "refused" / "history.csv").exists()
    # a finished run asked to fine-tune more than its base has: refused, its folder as it was
    run = tmp_path / "run"
    train(tiny_config(epochs=1), colour_data_session, run_dir=run)
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    with pytest.raises(ConfigError, match=re.escape(said)):
        continue_run(run, fine_tune_layers=500, fine_tune_epochs=1)
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before


@pytest.mark.parametrize("kw", [dict(), dict(freeze="top:5", augment="default")], ids=["features", "tf.data"])
def test_same_config_and_seed_give_the_same_history(colour_data_session, kw):
    cfg = learner_config(epochs=2, **kw) if not kw else tiny_config(epochs=2, **kw)
    a, b = train(cfg, colour_data_session), train(cfg, colour_data_session)
    for ra, rb in zip(a.history, b.history):
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert ra[k] == pytest.approx(rb[k], abs=1e-6)


def test_training_under_the_default_and_a_one_device_mirrored_strategy(colour_data_session):
    import tensorflow as tf

    from core.train import make_strategy

    assert make_strategy("auto") is tf.distribute.get_strategy()  # one CPU, no TF_CONFIG
    results = {}
    for name, strategy in (("default", tf.distribute.get_strategy()), ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0"]))):
        r = train(tiny_config(epochs=1), colour_data_session, strategy=strategy)
        results[name] = r.history[0]
        assert r.model.distribute_strategy is strategy
    assert results["mirrored"]["loss"] == pytest.approx(results["default"]["loss"], rel=1e-4)
    r = train(tiny_config(epochs=1, freeze="top:3"), colour_data_session, strategy=tf.distribute.MirroredStrategy(["/cpu:0"]))
    assert r.path == "full" and r.history[0]["val_accuracy"] is not None


def test_strategy_and_tf_config_mistakes_are_clear(monkeypatch):
    from core.config import ConfigError
    from core.train import make_strategy

    with pytest.raises(ConfigError, match="strategy: Expected one of auto, default, mirrored, multi-worker"):
        make_strategy("tpu")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG: Expected JSON"):
        make_strategy("auto")
