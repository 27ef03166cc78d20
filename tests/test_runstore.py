"""core.runstore and core.worker: the SQLite run store, the store listener driven by hand, a killed worker."""
import os
import signal
import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest

from core.config import ExperimentConfig
from core.runstore import RunStore, RunStoreError
from core.train import BatchEvent, EpochEvent, TrainPlan
from core.worker import StoreListener, StoreStopFlag, data_from_spec, data_spec

TINY = dict(base="mobilenet", alpha=0.25, image_size=32, weights="none", freeze="none", dense=[16], batch_size=8)


def _row(epoch, va, phase="train"):
    return {"epoch": epoch, "phase": phase, "lr": 1e-3, "loss": 1.0 / epoch, "accuracy": 0.5 + epoch / 20,
            "val_loss": 1.1 / epoch, "val_accuracy": va, "seconds": 0.5}


def test_round_trip(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    cfg = ExperimentConfig(weights="none", dropout=0.5)
    rid = store.create(cfg.to_json(), label="dropout 0.5", run_dir=tmp_path / "r1", epochs=3)
    assert store.get(rid).status == "queued"
    store.start(rid, pid=1234)
    for epoch, va in ((1, 0.6), (2, 0.8), (3, 0.8)):
        store.add_epoch(rid, _row(epoch, va))
    store.set_progress(rid, {"phase": "train", "epoch": 3, "batch": 4, "batches": 4, "eta_s": 0.0})
    store.finish(rid, "finished", outcome="completed")

    again = RunStore(tmp_path / "runs.sqlite")  # reopened from its path, as another process does
    rec = again.get(rid)
    assert (rec.status, rec.outcome, rec.label, rec.pid, rec.epochs) == ("finished", "completed", "dropout 0.5", 1234, 3)
    assert ExperimentConfig.from_dict(rec.config) == cfg
    assert [r["epoch"] for r in rec.history] == [1, 2, 3]
    assert rec.history[1] == _row(2, 0.8)
    assert (rec.best_epoch, rec.best_val_accuracy) == (2, 0.8)  # first of the equal best
    assert rec.progress["batch"] == 4 and rec.finished >= rec.started >= rec.created
    with sqlite3.connect(tmp_path / "runs.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    other = again.create(cfg.to_json(), kind="compare", label="dropout 0", group="g1")
    assert [r.id for r in again.list()] == [other, rid]
    assert [r.id for r in again.list(kind="compare")] == [other]
    assert [r.id for r in again.active()] == [other]
    with pytest.raises(RunStoreError, match="stop it first"):
        again.delete(other)
    again.request_stop(other)
    assert again.stop_requested(other) and not again.stop_requested(rid)
    (tmp_path / "r1").mkdir()
    assert again.delete(rid) and not (tmp_path / "r1").exists()
    assert again.get(rid) is None and again.history(rid) == []


def test_not_a_store_is_a_clear_message(tmp_path):
    bogus = tmp_path / "runs.sqlite"
    bogus.write_text("hello, not a database " * 100)
    with pytest.raises(RunStoreError, match="Expected a Transfer Lab runs.sqlite"):
        RunStore(bogus)


def test_reader_threads_while_a_writer_writes(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    rid = store.create("{}", epochs=60)
    seen, errors = [], []

    def read():
        try:
            for _ in range(60):
                seen.append(len(RunStore(store.path).history(rid)))
        except Exception as e:  # pragma: no cover - the assertion below shows it
            errors.append(e)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for epoch in range(1, 61):
        store.add_epoch(rid, _row(epoch, epoch / 100))
        store.set_progress(rid, {"epoch": epoch})
    for t in readers:
        t.join()
    assert not errors and max(seen) <= 60 and store.get(rid).best_epoch == 60


def test_store_listener_driven_by_hand(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    rid = store.create("{}", epochs=4)
    now = [100.0]
    listener = StoreListener(store, rid, clock=lambda: now[0], every=0.0)
    cfg = ExperimentConfig(epochs=4, lr=1e-3)
    listener.on_train_begin(TrainPlan(rid, cfg, "features", 4, 10, 2, ["a", "b"], {}, ["a warning"]))
    assert store.get(rid).progress["phase"] == "starting"
    for b in (1, 2):  # the features pass: 2 s per batch after the first
        now[0] += 2
        listener.on_batch_end(BatchEvent(rid, "features", 0, b, 4))
    prog = store.get(rid).progress
    assert (prog["phase"], prog["batch"], prog["batches"], prog["eta_s"]) == ("features", 2, 4, pytest.approx(4.0))
    for b in (3, 4):
        now[0] += 2
        listener.on_batch_end(BatchEvent(rid, "features", 0, b, 4))
    for epoch in (1, 2):
        for b in (1, 2):
            now[0] += 1
            listener.on_batch_end(BatchEvent(rid, "train", epoch, b, 2))
        if epoch == 1:
            prog = store.get(rid).progress
            assert prog["eta_s"] == pytest.approx(3 * 2.0)  # 2 s an epoch, 3 more epochs
        now[0] += 1  # validation
        row = {"epoch": epoch, "loss": 1 / epoch, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.4 + epoch / 10,
               "lr": 1e-3, "seconds": 3.0}
        listener.on_epoch_end(EpochEvent(rid, "train", epoch, 4, row))
    rec = store.get(rid)
    assert [r["epoch"] for r in rec.history] == [1, 2] and rec.history[0]["phase"] == "train"
    assert rec.history[1]["lr"] == pytest.approx(1e-3) and rec.progress["lr"] == pytest.approx(1e-3)
    assert (rec.best_epoch, rec.best_val_accuracy) == (2, pytest.approx(0.6))
    assert rec.progress["eta_s"] == pytest.approx(2 * 3.0)  # 3 s an epoch, 2 to go
    assert listener.warnings == ["a warning"]
    # events that carry phase and lr (two-phase fine-tuning) are recorded as such
    fine = EpochEvent(rid, "fine-tune", 3, 4, {"epoch": 3, "loss": 0.2, "val_accuracy": 0.7})
    fine.lr = 1e-4
    listener.on_epoch_end(fine)
    last = store.get(rid).history[-1]
    assert (last["phase"], last["lr"]) == ("fine-tune", pytest.approx(1e-4))


def test_eta_counts_each_phase_at_its_own_pace(tmp_path):
    """Head epochs on cached features take 1 s, fine-tuning epochs 10 s (8 s of batches, 2 s validating):
    the head's pace never stands for fine-tuning; until a fine-tuning epoch is timed the estimate says it
    covers this phase only; an epoch's validation counts once it has been seen."""
    from core.experiments import RunHandle

    store = RunStore(tmp_path / "runs.sqlite")
    rid = store.create("{}", epochs=5)
    store.start(rid, pid=os.getpid())
    now = [0.0]
    listener = StoreListener(store, rid, clock=lambda: now[0], every=0.0)
    phases = [{"phase": "head", "epochs": 2, "first_epoch": 1, "last_epoch": 2},
              {"phase": "fine-tune", "epochs": 3, "first_epoch": 3, "last_epoch": 5}]
    listener.on_train_begin(TrainPlan(rid, ExperimentConfig(), "features", 5, 10, 2, ["a", "b"], {}, phases=phases))

    def epoch(n, phase, seconds, batches=4, validation=0.0):
        for b in range(1, batches + 1):
            now[0] += seconds / batches
            listener.on_batch_end(BatchEvent(rid, phase, n, b, batches))
            if n == 3 and b == 2:  # fine-tuning's first epoch, half done: timed by its own batches
                p = RunHandle(store.path, rec_group).snapshot()
                assert p.eta_s == pytest.approx(4.0 + 2 * 8.0) and p.eta_scope == "run"
                assert "about 20 s left" in p.text() and "in this phase" not in p.text()
            if n == 4 and b == 2:  # now its validation (2 s after the last batch) is known too
                assert store.get(rid).progress["eta_s"] == pytest.approx(4.0 + 2.0 + 10.0)
        now[0] += validation
        listener.on_epoch_end(EpochEvent(rid, phase, n, 5, {"epoch": n, "phase": phase, "val_accuracy": 0.5}))

    rec_group = store.get(rid).group
    epoch(1, "head", 1.0)
    p = RunHandle(store.path, rec_group).snapshot()
    assert (p.eta_s, p.eta_scope) == (pytest.approx(1.0), "phase")  # one head epoch; fine-tuning not timed
    for b in (1, 2):
        now[0] += 0.25
        listener.on_batch_end(BatchEvent(rid, "head", 2, b, 4))
    p = RunHandle(store.path, rec_group).snapshot()
    assert p.eta_scope == "phase" and p.eta_s == pytest.approx(0.5)  # two batches of 0.25 s left, nothing more
    assert p.text().endswith("about 0 s left in this phase")
    now[0] += 0.5
    listener.on_batch_end(BatchEvent(rid, "head", 2, 4, 4))
    listener.on_epoch_end(EpochEvent(rid, "head", 2, 5, {"epoch": 2, "phase": "head", "val_accuracy": 0.5}))
    assert store.get(rid).progress["eta_s"] is None  # fine-tuning comes next: no guess from the head's pace
    now[0] += 3.0  # unlocking and compiling again
    epoch(3, "fine-tune", 8.0, validation=2.0)
    assert store.get(rid).progress["eta_s"] == pytest.approx(2 * 13.0)  # its one timed epoch also compiled
    epoch(4, "fine-tune", 8.0, validation=2.0)
    assert store.get(rid).progress["eta_s"] == pytest.approx(10.0)  # the second epoch's pace from now on
    epoch(5, "fine-tune", 8.0, validation=2.0)
    assert store.get(rid).progress["eta_s"] == 0.0


def test_resuming_a_run_clears_its_last_progress(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    rid = store.create("{}", label="mobilenet 32px, none, lock all, dropout 0.2", epochs=3)
    store.start(rid)
    store.set_progress(rid, {"phase": "head", "epoch": 3, "batch": 4, "batches": 4, "eta_s": 0.0, "epochs_done": 3})
    store.finish(rid, "stopped", outcome="stopped")
    old_start = store.get(rid).started
    time.sleep(0.01)
    store.resume(rid, epochs=8, label="mobilenet 32px, none, lock all, dropout 0.2, fine-tune top 20")
    rec = store.get(rid)
    assert (rec.status, rec.progress, rec.epochs) == ("queued", {}, 8) and rec.started > old_start
    assert rec.label.endswith("fine-tune top 20")
    store.resume(rid)  # nothing given: the count and the name stay
    assert (store.get(rid).epochs, store.get(rid).label) == (8, rec.label)


def test_stop_flag_reads_the_store(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    rid = store.create("{}", group="job")
    member = store.create("{}", group="job")
    flag = StoreStopFlag(store, member, every=0.0)
    assert not flag.is_set()
    store.request_stop(rid)  # a stop asked for one run stops its whole job
    assert flag.is_set() and flag.is_set()


def test_data_spec_round_trip(colour_data_session):
    data = colour_data_session
    again = data_from_spec(data_spec(data))
    assert again.class_names == data.class_names and again.train.paths == data.train.paths
    assert again.validation.labels.tolist() == data.validation.labels.tolist()
    assert again.fingerprint() == data.fingerprint()


# -- a real worker, killed mid-run ------------------------------------------------------------------

def test_killed_worker_leaves_finished_epochs_and_is_marked_failed(tmp_path, colour_data_session):
    from core.experiments import RunBusy, start_training

    ws = SimpleNamespace(runs_dir=tmp_path / "runs", store_path=tmp_path / "runs.sqlite")
    ws.runs_dir.mkdir()
    run = start_training(ExperimentConfig(**TINY, epochs=200), colour_data_session, workspace=ws)
    deadline = time.time() + 180
    while time.time() < deadline and len(RunStore(ws.store_path).history(run.run_ids[0])) < 2:
        time.sleep(0.2)
    rec = RunStore(ws.store_path).get(run.run_ids[0])
    assert rec.status == "running" and len(rec.history) >= 2
    with pytest.raises(RunBusy, match="already going in this workspace"):
        start_training(ExperimentConfig(**TINY, epochs=1), colour_data_session, workspace=ws)
    os.kill(rec.pid, signal.SIGKILL)
    assert run.join(30)
    p = run.snapshot()
    assert p.status == "failed" and "killed (SIGKILL)" in p.message
    reopened = RunStore(ws.store_path).get(rec.id)
    assert reopened.status == "failed" and "SIGKILL" in reopened.error
    assert len(reopened.history) >= len(rec.history)
    assert all(r["loss"] is not None and r["val_accuracy"] is not None for r in reopened.history)
    assert run.result is None
