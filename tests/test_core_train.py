import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.data import load_arrays
from core.export import load_model
from core.train import StopFlag, TrainingListener, train
from tests.conftest import learner_config, tiny_config

ROOT = Path(__file__).resolve().parents[1]


class Recorder(TrainingListener):
    def __init__(self, stop_after_epoch=None, stop_at_batch=None, stop=None):
        self.plans, self.batches, self.epochs, self.results = [], [], [], []
        self.stop_after_epoch, self.stop_at_batch, self.stop = stop_after_epoch, stop_at_batch, stop

    def on_train_begin(self, plan):
        self.plans.append(plan)

    def on_batch_end(self, e):
        self.batches.append(e)
        if self.stop_at_batch and e.phase != "features" and (e.epoch, e.batch) == self.stop_at_batch:
            self.stop.set()

    def on_epoch_end(self, e):
        self.epochs.append(e)
        if self.stop_after_epoch == e.epoch:
            self.stop.set()

    def on_train_end(self, result):
        self.results.append(result)


def test_frozen_base_trains_the_head_on_cached_features_and_learns(colour_data_session, tmp_path):
    data = colour_data_session
    rec = Recorder()
    # 64 units: a head of 16 ReLU units on random ResNet features learns or not by the luck of
    # its seed and batch order (0.67-1.0 over seeds 0-2); 64 learn under each of them
    r = train(learner_config(epochs=15, dense=[64]), data, listeners=[rec], run_dir=tmp_path / "run")
    assert r.path == "features" and rec.plans[0].path == "features"
    assert r.status == "completed" and len(r.history) == 15
    assert r.best_val_accuracy >= 0.9
    # features computed once: only "features" batches before epoch 1, none after
    feature_batches = [b for b in rec.batches if b.phase == "features"]
    assert feature_batches and all(b.epoch == 0 for b in feature_batches)
    assert [e.epoch for e in rec.epochs] == list(range(1, 16))
    # the saved model is the whole model at its best epoch and predicts the same as the run
    x_val = load_arrays(data.validation.paths, 32)
    probs = r.model.predict(x_val.astype(np.float32), verbose=0)
    acc = float(np.mean(probs.argmax(1) == data.validation.labels))
    assert acc == pytest.approx(r.best_val_accuracy, abs=1e-6)
    model, names = load_model(tmp_path / "run" / "model.keras")
    assert names == data.class_names
    np.testing.assert_allclose(model.predict(x_val.astype(np.float32), verbose=0), probs, rtol=1e-4, atol=1e-5)


def test_a_second_run_reuses_the_cached_features(colour_data_session):
    cfg = tiny_config(epochs=1, seed=3)
    train(cfg, colour_data_session)
    rec = Recorder()
    r = train(cfg, colour_data_session, listeners=[rec])
    assert not [b for b in rec.batches if b.phase == "features"]
    assert r.timings["decode_s"] == 0.0  # the features were all it needed: no wait for decoded images
    assert len(r.history) == 1  # (hit, miss and invalidation: tests/test_feature_cache.py)


def test_saved_model_reloads_in_a_fresh_process_and_predicts_the_same(colour_data_session, tmp_path):
    data = colour_data_session
    r = train(tiny_config(epochs=2), data, run_dir=tmp_path / "run")
    x = load_arrays(data.validation.paths[:4], 32)
    np.save(tmp_path / "x.npy", x)
    want = r.model.predict(x.astype(np.float32), verbose=0)
    code = ("import sys, numpy as np, keras, json, zipfile; "
            f"m = keras.saving.load_model(r'{tmp_path / 'run' / 'model.keras'}', safe_mode=True); "
            f"p = m.predict(np.load(r'{tmp_path / 'x.npy'}').astype('float32'), verbose=0); "
            f"np.save(r'{tmp_path / 'p.npy'}', p); "
            f"print(json.loads(zipfile.ZipFile(r'{tmp_path / 'run' / 'model.keras'}').read('labels.json'))['class_names'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(data.class_names)  # plain Keras, no Transfer Lab import
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), want, rtol=1e-4, atol=1e-5)


def test_augmentation_trains_the_whole_model_through_tf_data(colour_data_session):
    rec = Recorder()
    r = train(tiny_config(augment="default", epochs=2), colour_data_session, listeners=[rec])
    assert r.path == "full" and len(r.history) == 2
    # the base is locked: the head phase, on images (after one pass over the validation images)
    assert {b.phase for b in rec.batches} == {"features", "head"}
    assert set(r.history[0]) >= {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}


def test_a_locked_base_with_augmentation_validates_on_features_computed_once(colour_data_session):
    import math

    from core.train import compile_model

    data = colour_data_session
    rec = Recorder()
    cfg = learner_config(augment="default", epochs=4)
    r = train(cfg, data, listeners=[rec])
    assert r.path == "full" and r.status == "completed" and len(r.history) == 4
    features = [b for b in rec.batches if b.phase == "features"]
    # one pass, over the validation images only, before the first epoch
    assert [b.batch for b in features] == list(range(1, math.ceil(len(data.validation) / cfg.batch_size) + 1))
    assert rec.batches.index(features[-1]) == len(features) - 1
    assert len({h["val_loss"] for h in r.history}) == 4  # each epoch validated anew
    # the restored best epoch's validation is Keras' own validation of the whole model
    x_val = load_arrays(data.validation.paths, cfg.image_size).astype(np.float32)
    compile_model(r.model, cfg)
    scores = r.model.evaluate(x_val, data.validation.labels, batch_size=cfg.batch_size, verbose=0, return_dict=True)
    best = r.history[r.best_epoch - 1]
    assert scores["loss"] == pytest.approx(best["val_loss"], rel=1e-4, abs=1e-5)
    assert scores["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)


def test_unlocked_layers_train_the_base_too(colour_data_session):
    import keras

    cfg = tiny_config(freeze="top:5", epochs=1)
    keras.utils.set_random_seed(0)
    from core.model import build_model

    fresh = build_model(cfg, 3).base  # the same seed as train() uses: the same initial weights
    before, locked_before = (fresh.get_layer(n).get_weights()[0] for n in ("conv_pw_13", "conv1"))
    r = train(cfg, colour_data_session)
    assert r.path == "full"
    trained = r.model.layers[2]
    assert not np.allclose(before, trained.get_layer("conv_pw_13").get_weights()[0])
    np.testing.assert_array_equal(locked_before, trained.get_layer("conv1").get_weights()[0])


def test_stop_after_an_epoch_keeps_the_finished_epochs(colour_data_session, tmp_path):
    stop = StopFlag()
    rec = Recorder(stop_after_epoch=2, stop=stop)
    r = train(tiny_config(epochs=10), colour_data_session, listeners=[rec], stop=stop, run_dir=tmp_path / "run")
    assert r.status == "stopped" and len(r.history) == 2
    assert (tmp_path / "run" / "model.keras").exists()
    assert len((tmp_path / "run" / "history.csv").read_text().strip().splitlines()) == 3


def test_stop_mid_epoch_drops_only_the_unfinished_epoch(colour_data_session):
    stop = StopFlag()
    rec = Recorder(stop_at_batch=(2, 1), stop=stop)
    r = train(tiny_config(augment="default", epochs=5, batch_size=8), colour_data_session, listeners=[rec], stop=stop)
    assert r.status == "stopped"
    assert [h["epoch"] for h in r.history] == [1]
    assert r.best_epoch == 1 and r.model is not None


def test_locked_random_base_is_warned_about(colour_data_session):
    rec = Recorder()
    train(tiny_config(epochs=1), colour_data_session, listeners=[rec])
    assert "random features" in rec.plans[0].warnings[0]


def test_early_stopping_on_val_loss(colour_data_session):
    r = train(learner_config(epochs=30, lr=0.05, optimizer="sgd", early_stopping=1), colour_data_session)
    assert r.status == "early-stopped" and len(r.history) < 30
    losses = [h["val_loss"] for h in r.history]
    assert losses[-1] >= min(losses[:-1])


def test_invalid_settings_are_refused_before_any_work(colour_data_session):
    from core.config import ConfigError

    rec = Recorder()
    with pytest.raises(ConfigError, match="dropout: Expected a rate with 0 <= rate < 1. Received: 1.0"):
        train(tiny_config(dropout=1.0), colour_data_session, listeners=[rec])
    assert rec.plans == []


def test_class_weights_are_used_when_on(colour_data_session, monkeypatch):
    import keras

    seen = {}
    original = keras.Model.fit

    def spy(self, *a, **k):
        seen["class_weight"] = k.get("class_weight")
        return original(self, *a, **k)

    monkeypatch.setattr(keras.Model, "fit", spy)
    train(learner_config(epochs=1, class_weights=True), colour_data_session)
    assert seen["class_weight"] == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})


def test_from_scratch_batchnorm_statistics_are_recalibrated_before_validation(colour_data_session):
    from core.model import build_model
    from core.train import recalibrate_batchnorm

    cfg = tiny_config(freeze="none", weights="none")
    built = build_model(cfg, 3)
    x = load_arrays(colour_data_session.train.paths[:16], 32).astype(np.float32)
    inp = built.preprocess(x)
    before = np.asarray(built.base(inp, training=False))
    recalibrate_batchnorm(built, x, batch_size=16)
    after = np.asarray(built.base(inp, training=False))
    batch_mode = np.asarray(built.base(inp, training=True))
    assert np.abs(before).mean() < 1e-3 * np.abs(batch_mode).mean()  # vanished before
    np.testing.assert_allclose(after, batch_mode, rtol=1e-2, atol=1e-3 * np.abs(batch_mode).max())
    r = train(tiny_config(freeze="none", weights="none", epochs=2), colour_data_session)
    assert r.path == "full" and all(h["val_accuracy"] is not None for h in r.history)


def test_recorder_driven_by_hand_best_epoch_patience_phases_and_stop():
    """The bridge from Keras callbacks to listeners, without fit: monitor, patience per phase, Stop."""
    import keras

    from core.train import _Recorder

    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp))
    rec_events = Recorder()
    stop = StopFlag()
    rec = _Recorder("r1", tiny_config(early_stopping=2, monitor="val_accuracy"), [rec_events], stop, model, total_epochs=6)
    bridge = rec.keras_callback()
    bridge.set_model(model)
    bridge.set_params({"steps": 2, "epochs": 3})
    dense = model.layers[-1]

    def epoch(val_acc, value):
        dense.kernel.assign(np.full((2, 1), value, np.float32))  # "training" moves the weights
        bridge.on_epoch_begin(0)
        for b in range(2):
            bridge.on_train_batch_end(b, {"loss": 1.0})
        bridge.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": val_acc})

    rec.start_phase("head", 1e-3, model.weights)
    for acc, w in ((0.5, 1.0), (0.8, 2.0), (0.7, 3.0), (0.6, 4.0)):
        epoch(acc, w)
    assert rec.early_stopped and model.stop_training  # two epochs without a better val_accuracy
    assert rec.best == (2, 0.8)
    rec.restore_best()
    np.testing.assert_array_equal(dense.kernel.numpy(), np.full((2, 1), 2.0))
    model.stop_training = False
    rec.start_phase("fine-tune", 1e-4, model.weights)  # patience starts again; the best carries on
    assert not rec.early_stopped
    epoch(0.9, 5.0)
    assert rec.best == (5, 0.9)
    assert [(e.epoch, e.phase, e.lr, e.best_epoch) for e in rec_events.epochs] == [
        (1, "head", 1e-3, 1), (2, "head", 1e-3, 2), (3, "head", 1e-3, 2), (4, "head", 1e-3, 2), (5, "fine-tune", 1e-4, 5)]
    assert [(b.epoch, b.batch, b.batches, b.phase) for b in rec_events.batches[-2:]] == [(5, 1, 2, "fine-tune"), (5, 2, 2, "fine-tune")]
    assert [h["phase"] for h in rec.history] == ["head"] * 4 + ["fine-tune"]
    # Stop mid-epoch: the epoch is not recorded and training ends
    stop.set()
    bridge.on_epoch_begin(0)
    bridge.on_train_batch_end(0, {"loss": 1.0})
    bridge.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 1.0})
    assert rec.stopped and model.stop_training and len(rec.history) == 5 and rec.best == (5, 0.9)


def test_augmentation_moves_images_in_training_only_and_follows_its_seed():
    from core.augment import augmentation_model

    x = np.full((4, 32, 32, 3), 128.0, np.float32)
    x[:, 4:14, 4:20] = (220, 40, 40)  # a red bar in the top-left corner
    a, b = augmentation_model("default", seed=3), augmentation_model("default", seed=3)
    out_a, out_b = np.asarray(a(x, training=True)), np.asarray(b(x, training=True))
    np.testing.assert_allclose(out_a, out_b, atol=1e-4)  # same seed, same augmentation
    assert out_a.shape == x.shape and np.abs(out_a - x).mean(axis=(1, 2, 3)).min() > 1.0  # every image moved
    assert not np.allclose(out_a[0], out_a[1])  # each image its own draw
    np.testing.assert_array_equal(np.asarray(a(x, training=False)), x)
    assert augmentation_model("none") is None


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_a_large_head_gets_fused_updates_with_the_plain_optimizers_losses(colour_data_session, monkeypatch, optimizer):
    import core.train as ct

    # ResNet50 at 32 px: 1x1x2048 features; Flatten -> Dense 1024 is 2.1 M weights (>= the threshold)
    cfg = learner_config(pooling="flatten", dense=[1024], epochs=3, optimizer=optimizer, lr=1e-4)
    made = []
    real = ct._fused_updates
    monkeypatch.setattr(ct, "_fused_updates", lambda cls: made.append(cls.__name__) or real(cls))
    fused = train(cfg, colour_data_session)
    assert made == [{"rmsprop": "RMSprop", "adam": "Adam"}[optimizer]]  # the head on features, once
    monkeypatch.setattr(ct, "FUSED_HEAD_WEIGHTS", 10**12)
    plain = train(cfg, colour_data_session)
    assert len(made) == 1
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in fused.history], [h[key] for h in plain.history], rtol=1e-5)
    for a, b in zip(fused.model.weights, plain.model.weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_a_large_head_trained_with_the_base_in_the_step_gets_fused_updates_and_saves_plain(colour_data_session,
                                                                                         monkeypatch, tmp_path):
    import core.train as ct

    # augmentation: the whole model (locked ResNet50 + Flatten -> Dense 1024) trains on images
    cfg = learner_config(pooling="flatten", dense=[1024], epochs=1, augment="default", optimizer="rmsprop", lr=1e-4)
    made, fused_vars = [], []
    real = ct._fused_updates

    def spy(cls):
        made.append(cls.__name__)
        fused_cls = real(cls)
        plain_step = fused_cls.update_step

        def update_step(self, gradient, variable, learning_rate):
            if np.prod(variable.shape) >= ct.FUSED_VARIABLE_WEIGHTS:
                fused_vars.append(tuple(variable.shape))
            return plain_step(self, gradient, variable, learning_rate)

        return type(fused_cls.__name__, (fused_cls,), {"update_step": update_step})

    monkeypatch.setattr(ct, "_fused_updates", spy)
    fused = train(cfg, colour_data_session, run_dir=tmp_path / "fused")
    assert fused.path == "full" and made == ["RMSprop"]
    assert set(fused_vars) == {(2048, 1024)}  # only the large kernel; its bias and the output layer stay plain
    assert type(fused.model.optimizer).__name__ == "RMSprop"  # compiled plain again before saving
    monkeypatch.setattr(ct, "FUSED_HEAD_WEIGHTS", 10**12)
    plain = train(cfg, colour_data_session)
    assert len(made) == 1
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in fused.history], [h[key] for h in plain.history], rtol=1e-5)
    x_val = load_arrays(colour_data_session.validation.paths, 32).astype(np.float32)
    import keras

    reloaded = keras.saving.load_model(tmp_path / "fused" / "model.keras")  # compiled, as a user would load it
    assert type(reloaded.optimizer).__name__ == "RMSprop"
    np.testing.assert_allclose(reloaded.predict(x_val, verbose=0), fused.model.predict(x_val, verbose=0), atol=1e-5)


def test_feature_batches_cover_every_example_once_an_epoch_in_seeded_orders():
    from core.train import _feature_dataset, _steps

    f = (np.arange(10, dtype=np.float32) * 10).reshape(10, 1, 1)
    y = np.arange(10) % 3

    def epochs(ds, n_epochs, steps):
        batches = [(a.numpy().ravel(), b) for a, b in ds]
        assert len(batches) == n_epochs * steps
        return [batches[e * steps:(e + 1) * steps] for e in range(n_epochs)]

    steps = _steps(10, 4)
    assert steps == 3
    runs = [epochs(_feature_dataset(f, y, 4, seed=3, epochs=3), 3, steps) for _ in range(2)]
    orders = []
    for epoch in runs[0]:
        assert [len(a) for a, _ in epoch] == [4, 4, 2]  # the last batch partial
        idx = np.concatenate([a for a, _ in epoch]) / 10
        assert sorted(idx) == list(range(10))  # each example once an epoch
        for a, b in epoch:
            assert list(b.numpy()) == list((a / 10).astype(int) % 3)  # labels stay with their features
        orders.append(list(idx))
    assert len({tuple(o) for o in orders}) == 3  # a new order each epoch
    assert orders == [list(np.concatenate([a for a, _ in e]) / 10) for e in runs[1]]  # the same for the same seed
    later = epochs(_feature_dataset(f, y, 4, seed=3, epochs=1, first_epoch=1), 1, steps)[0]
    assert list(np.concatenate([a for a, _ in later]) / 10) == orders[1]  # a later phase goes on to new orders
    # in order (validation), labels as a tuple for heads side by side
    (a, (b1, b2)), = list(_feature_dataset(f, (y, y)))
    assert list(a.numpy().ravel() / 10) == list(range(10)) and list(b1.numpy()) == list(b2.numpy()) == list(y)


def test_image_pipeline_serves_every_epoch_from_one_iterator_and_validates_in_order():
    from core.train import _pipeline, _steps

    # image i is filled with the value i: each batch says which images it holds
    x = np.repeat(np.arange(10, dtype=np.uint8), 4 * 4 * 3).reshape(10, 4, 4, 3)
    y = np.arange(10) % 3
    cfg = tiny_config(batch_size=4, augment="none", seed=5)
    steps = _steps(10, 4)
    batches = list(_pipeline(x, y, cfg, epochs=3))
    assert len(batches) == 3 * steps  # one pipeline for the whole fit: Keras reads steps_per_epoch from it
    orders = []
    for e in range(3):
        epoch = batches[e * steps:(e + 1) * steps]
        assert [len(a) for a, _ in epoch] == [4, 4, 2]
        assert all(a.dtype.name == "float32" for a, _ in epoch)
        idx = np.concatenate([a.numpy()[:, 0, 0, 0] for a, _ in epoch]).astype(int)
        assert sorted(idx) == list(range(10))  # each image once an epoch
        for a, b in epoch:
            assert list(b.numpy()) == list(a.numpy()[:, 0, 0, 0].astype(int) % 3)  # labels stay with their images
        orders.append(list(idx))
    assert len({tuple(o) for o in orders}) == 3  # a new order each epoch, drawn from the seed
    rerun = np.concatenate([a.numpy()[:, 0, 0, 0] for a, _ in _pipeline(x, y, cfg, epochs=3)]).astype(int)
    assert list(rerun) == sum(orders, [])  # the same orders for the same seed
    again = list(_pipeline(x, y, cfg, epochs=1, first_epoch=2))
    assert list(np.concatenate([a.numpy()[:, 0, 0, 0] for a, _ in again]).astype(int)) == orders[2]
    # validation: in order, one pass, never augmented even when training is
    val = list(_pipeline(x, y, tiny_config(batch_size=4, augment="default"), train=False))
    assert [len(a) for a, _ in val] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([a.numpy() for a, _ in val]), x.astype(np.float32))
    # training with augmentation: the images move, the labels do not
    aug = list(_pipeline(x, y, tiny_config(batch_size=4, augment="default"), epochs=1))
    assert sum(len(a) for a, _ in aug) == 10 and aug[0][0].shape[1:] == (4, 4, 3)
