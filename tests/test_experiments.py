"""core.experiments: background runs, progress records, dropout comparison, plans."""
import time

import pytest

from core.config import ConfigError, ExperimentConfig
from core.experiments import experiment_lines, parse_rates
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


# -- the progress a page reads from the store, driven by hand ----------------------------------------

def _ws(tmp_path):
    from types import SimpleNamespace

    ws = SimpleNamespace(runs_dir=tmp_path / "runs", store_path=tmp_path / "runs.sqlite")
    ws.runs_dir.mkdir(exist_ok=True)
    return ws


def _compare_job(store, rates=(0.0, 0.5), epochs=4):
    import os

    ids = [store.create(ExperimentConfig(weights="none", dropout=r, epochs=epochs).to_json(), kind="compare",
                        label=f"dropout {r:g}", group="job1", run_id=f"job1-{i + 1}", epochs=epochs)
           for i, r in enumerate(rates)]
    for rid in ids:
        store.set_pid(rid, os.getpid())  # "alive": this process
    return ids


def test_progress_from_the_store_driven_by_hand(tmp_path):
    from core.experiments import RunHandle, open_store
    from core.worker import StoreListener

    ws = _ws(tmp_path)
    store = open_store(ws)
    a, b = _compare_job(store)
    handle = RunHandle(store.path, "job1", "compare")
    p = handle.snapshot()
    assert p.status == "queued" and "starting the training process" in p.text() and p.fraction() == 0.0
    store.start(a)
    now = [0.0]
    listener = StoreListener(store, a, clock=lambda: now[0], every=0.0)
    listener.on_train_begin(TrainPlan(a, ExperimentConfig(epochs=4), "features", 4, 10, 2, ["x", "y"], {}))
    now[0] += 1
    listener.on_batch_end(BatchEvent(a, "features", 0, 1, 2))
    p = handle.snapshot()
    assert p.phase == "features" and "Run 1/2 (dropout 0): computing base features once, batch 1/2" in p.text()
    assert 0 < p.fraction() < 0.1 / 2
    for epoch in (1, 2):
        now[0] += 1
        listener.on_epoch_end(EpochEvent(a, "train", epoch, 4, {"epoch": epoch, "loss": 0.5, "val_accuracy": 0.5 + epoch / 10,
                                                                 "lr": 1e-4}))
    now[0] += 1
    listener.on_batch_end(BatchEvent(a, "train", 3, 1, 2))
    p = handle.snapshot()
    assert p.active and handle.running
    assert p.epoch == 2 and p.lr == pytest.approx(1e-4) and p.best_epoch == 2
    assert "epoch 3/4, batch 1/2 · about" in p.text()
    assert p.fraction() == pytest.approx((0.1 + 0.9 * 2.5 / 4) / 2)
    handle.request_stop()
    assert "stopping at the next batch" in handle.snapshot().text()
    store.finish(a, "stopped", outcome="stopped")
    store.finish(b, "stopped", outcome="stopped")
    p = handle.snapshot()
    assert p.status == "stopped" and p.message == "1 of 2 run(s) compared" and not handle.running
    result = handle.result
    assert result.stopped and [r.run_id for r in result.runs] == [a]
    assert result.table()["rate"].tolist() == [0.0] and result.best().best_epoch == 2  # a store without meta


def test_a_dead_worker_is_noticed_and_its_run_marked_failed(tmp_path):
    from core.experiments import RunHandle, check_idle, open_store

    ws = _ws(tmp_path)
    store = open_store(ws)
    rid = store.create(ExperimentConfig(weights="none").to_json(), label="lost", epochs=3)
    store.start(rid, pid=2 ** 22 + 12345)  # no such process
    store.add_epoch(rid, {"epoch": 1, "loss": 0.9, "val_accuracy": 0.4})
    check_idle(ws)  # noticed here: not busy any more
    rec = store.get(rid)
    assert rec.status == "failed" and "the training process is gone" in rec.error and len(rec.history) == 1
    p = RunHandle(store.path, rec.group).snapshot()
    assert p.status == "failed" and "Failed: the training process is gone" in p.text()


def test_experiment_lines_labels_from_scratch(tmp_path):
    from core.experiments import RunHandle, open_store

    store = open_store(_ws(tmp_path))
    rid = store.create(ExperimentConfig(weights="none", dropout=0.2).to_json(), epochs=1)
    store.start(rid)
    store.add_epoch(rid, {"epoch": 1, "loss": 0.5, "accuracy": 0.9, "val_loss": 0.6, "val_accuracy": 0.8})
    store.finish(rid, "finished", outcome="completed")
    lines = dict(experiment_lines(ExperimentConfig(weights="none"), None, None, RunHandle(store.path, rid)))
    assert lines["Dataset"] == "not chosen yet"
    assert "weights none (from scratch)" in lines["Base"]
    assert lines["Last run"].startswith("none (from scratch): completed after 1 epoch(s)")


def test_labels_warnings_and_words_say_fine_tuning(tmp_path):
    from core.experiments import RunHandle, open_store, run_label
    from core.model import from_scratch_warning

    plain = ExperimentConfig(**TINY)
    fine = ExperimentConfig(**{**TINY, "fine_tune_layers": 20, "fine_tune_epochs": 3})
    assert run_label(plain) == "mobilenet 32px, none (from scratch), lock all, dropout 0.2"
    assert run_label(fine) == run_label(plain) + ", fine-tune top 20"  # two such runs are told apart
    assert (plain.total_epochs(), fine.total_epochs()) == (2, 5)  # what a launched run's row counts to
    assert run_label(ExperimentConfig(**{**TINY, "fine_tune_layers": 20, "fine_tune_epochs": 0})) == run_label(plain)
    assert "expect chance accuracy" in from_scratch_warning(plain)
    said = from_scratch_warning(fine)
    assert "first phase" in said and "top 20 layers, still from random weights" in said
    store = open_store(_ws(tmp_path))
    rid = store.create(plain.to_json(), label=run_label(plain), epochs=3)
    store.start(rid)
    for e in (1, 2):
        store.add_epoch(rid, {"epoch": e, "loss": 0.5, "val_accuracy": 0.5})
    store.finish(rid, "stopped", outcome="stopped")
    assert RunHandle(store.path, rid).snapshot().text() == "Stopped after 2 epoch(s); best validation accuracy 50.0% at epoch 1"


def test_continuing_with_more_layers_than_the_base_has_is_refused_and_the_run_kept(tmp_path):
    from core.experiments import open_store, run_label, start_continue

    ws = _ws(tmp_path)
    store = open_store(ws)
    cfg = ExperimentConfig(**TINY)
    run_dir = ws.runs_dir / "r1"
    run_dir.mkdir()
    (run_dir / "model.keras").write_bytes(b"a saved model")
    rid = store.create(cfg.to_json(), label=run_label(cfg), run_dir=run_dir, epochs=2)
    store.start(rid)
    store.add_epoch(rid, {"epoch": 1, "loss": 0.5, "val_accuracy": 0.5})
    store.finish(rid, "finished", outcome="completed")
    before = store.get(rid)
    with pytest.raises(ConfigError, match=r"continue: fine_tune_layers: Expected 0 to \d+ \(the layers of MobileNet\)\. "
                                          r"Received: 5000"):
        start_continue(ws, rid, fine_tune_layers=5000, fine_tune_epochs=1)
    after = store.get(rid)
    assert (after.status, after.label, after.epochs, after.progress) == (before.status, before.label, 2, before.progress)


def test_runs_view_filter_sort_curves_delete(tmp_path):
    from core.experiments import delete_runs, filter_runs, open_store, runs_curves, runs_table

    ws = _ws(tmp_path)
    store = open_store(ws)
    ids = []
    for i, (label, va) in enumerate((("dropout 0", 0.6), ("dropout 0.5", 0.9), ("broken", None))):
        run_dir = ws.runs_dir / f"r{i}"
        run_dir.mkdir()
        rid = store.create(ExperimentConfig(weights="none").to_json(), label=label, run_dir=run_dir, epochs=2)
        store.start(rid)
        if va is not None:
            store.add_epoch(rid, {"epoch": 1, "loss": 0.5, "accuracy": 0.7, "val_loss": 0.6, "val_accuracy": va})
            store.finish(rid, "finished", outcome="completed")
        else:
            store.finish(rid, "failed", error="unexpected error: boom")
        ids.append(rid)
    recs = store.list(history=True)
    assert [r.label for r in filter_runs(recs)] == ["dropout 0.5", "dropout 0", "broken"]
    assert [r.label for r in filter_runs(recs, sort="newest")] == ["broken", "dropout 0.5", "dropout 0"]
    assert [r.label for r in filter_runs(recs, "DROPOUT 0.5")] == ["dropout 0.5"]
    assert [r.label for r in filter_runs(recs, "boom")] == ["broken"]
    assert [r.label for r in filter_runs(recs, statuses=["failed"])] == ["broken"]
    table = runs_table(filter_runs(recs))
    assert table["best val accuracy"].tolist()[:2] == [0.9, 0.6] and table["status"].tolist()[2] == "failed"
    assert table["epochs"].tolist() == ["1/2", "1/2", "0/2"]
    curves = runs_curves(recs)
    assert len(curves) == 2 and curves["run"].nunique() == 2
    assert delete_runs(ws, ids[:2]) == (2, [])
    assert [r.label for r in store.list()] == ["broken"] and not (ws.runs_dir / "r0").exists()


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


def test_stop_in_a_worker_keeps_finished_epochs_and_the_model(sample, tmp_path):
    import numpy as np

    from core.experiments import start_training
    from core.runstore import RunStore

    ws = _ws(tmp_path)
    run = start_training(ExperimentConfig(**{**TINY, "epochs": 200, "batch_size": 8}), sample, workspace=ws)
    deadline = time.time() + 180
    while time.time() < deadline and run.snapshot().epoch < 1:
        time.sleep(0.2)
    run.request_stop()
    assert run.join(60)
    p = run.snapshot()
    assert p.status == "stopped", p.message
    result = run.result
    assert result.status == "stopped" and 1 <= len(result.history) < 200
    assert RunStore(ws.store_path).get(result.run_id).status == "stopped"
    assert result.config.weights_label() == "none (from scratch)"
    assert result.model_file is not None and result.class_names == sample.class_names
    x = np.zeros((2, 32, 32, 3), np.float32)
    assert result.model.predict(x, verbose=0).shape == (2, 3)
    assert result.data.validation.paths == sample.validation.paths


def test_start_training_refuses_bad_config_before_any_process(sample):
    from core.experiments import start_training

    with pytest.raises(ConfigError, match="dropout: Expected"):
        start_training(ExperimentConfig(**{**TINY, "dropout": 1.0}), sample)


def test_compare_same_split_and_seed(sample, tmp_path):
    from core.experiments import start_compare
    from core.runstore import RunStore

    from core.experiments import handle_for_run, latest_handle

    ws = _ws(tmp_path)
    run = start_compare(ExperimentConfig(**{**TINY, "epochs": 1}), sample, "0, 0.5", workspace=ws, seeds=2)
    assert run.join(240)
    result = run.result
    assert run.snapshot().status == "finished", run.snapshot().message
    assert [r.config.dropout for r in result.runs] == [0.0, 0.0, 0.5, 0.5]
    assert [r.config.seed for r in result.runs] == [0, 1, 0, 1] and all(r.config.score_train for r in result.runs)
    table = result.table()
    assert table["rate"].tolist() == [0.0, 0.5] and table["seeds"].tolist() == [2, 2]
    assert table["final train accuracy"].between(0, 1).all() and len(run.snapshot().finished) == 3
    rows = RunStore(ws.store_path).list(kind="compare", history=True)
    assert sorted(r.label for r in rows) == ["dropout 0 · seed 0", "dropout 0 · seed 1", "dropout 0.5 · seed 0",
                                             "dropout 0.5 · seed 1"]
    assert all(len(r.history) == 1 and 0 <= r.history[0]["train_eval_accuracy"] <= 1 for r in rows)
    assert {(r.meta["variant"], r.meta["seed"]) for r in rows} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # after a refresh the comparison is read back whole from the store
    again = latest_handle(ws, "compare").result
    assert again.table()[["rate", "best val accuracy", "verdict"]].equals(table[["rate", "best val accuracy", "verdict"]])
    assert handle_for_run(ws.store_path, rows[0].id).result.history[0]["train_eval_accuracy"] is not None
