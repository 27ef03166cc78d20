"""The training worker: one process per job (a run, or a comparison's runs in turn).

The app starts :func:`run_job` in a process of the ``spawn`` context with
paths and JSON only (the store's path, each run's config and folder, the data
split written as ``data.json``): no arrays, no Keras state, no seeds cross
over, and every byte the run used goes back to the system when the process
ends. Progress goes into the run store (:class:`StoreListener`); Stop is a
flag in the store that :class:`StoreStopFlag` reads at each batch.

Nothing here imports TensorFlow at module level; :func:`core.train.train` does.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

import numpy as np

from core.runstore import RunStore
from core.train import StopFlag, TrainingListener

PROGRESS_EVERY_S = 0.25  # at most this often a batch is written to the store (the last one always)
STOP_POLL_S = 0.05


# -- the data split as paths ---------------------------------------------------------------------

def data_spec(data) -> dict:
    """A DataSplits as JSON-able paths and labels (what a worker needs to rebuild it)."""
    def part(ds):
        return None if ds is None else {"paths": list(ds.paths), "labels": [int(y) for y in ds.labels]}

    return {"root": str(data.root), "class_names": list(data.class_names), "layout": getattr(data, "layout", "classes"),
            "source": getattr(data, "source", ""), "train": part(data.train), "validation": part(data.validation),
            "test": part(getattr(data, "test", None))}


def data_from_spec(spec: dict):
    from core.data import DataSplits, ImageDataset

    names = list(spec["class_names"])

    def part(p):
        return None if p is None else ImageDataset(list(p["paths"]), np.asarray(p["labels"], np.int32), names)

    return DataSplits(root=spec["root"], class_names=names, train=part(spec["train"]),
                      validation=part(spec["validation"]), test=part(spec.get("test")),
                      layout=spec.get("layout", "classes"), source=spec.get("source", ""))


def write_data_spec(data, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data_spec(data)), encoding="utf-8")
    return path


# -- progress into the store, stop out of it --------------------------------------------------------

class StoreStopFlag(StopFlag):
    """A StopFlag that is also set by a stop request in the run store (checked at most every 50 ms)."""

    def __init__(self, store: RunStore, run_id: str, every: float = STOP_POLL_S):
        super().__init__()
        self.store, self.run_id, self.every = store, run_id, every
        self._checked = 0.0

    def is_set(self) -> bool:
        if super().is_set():
            return True
        now = time.monotonic()
        if now - self._checked >= self.every:
            self._checked = now
            if self.store.stop_requested(self.run_id):
                self.set()
        return super().is_set()


class StoreListener(TrainingListener):
    """Writes a run's progress into the store: each epoch as it ends, the latest batch (throttled) with an ETA.

    Reads ``phase`` and ``lr`` from the events when they carry them (``getattr``
    with defaults), else from the epoch's logs.
    """

    def __init__(self, store: RunStore, run_id: str, clock=time.monotonic, every: float = PROGRESS_EVERY_S):
        self.store, self.run_id, self.clock, self.every = store, run_id, clock, every
        self.epochs = 0
        self.path = ""
        self.lr = None
        self.epochs_done = 0
        self.warnings: list[str] = []
        self._written = -1e9
        self._mark = None  # when the current epoch (or the features pass) began
        self._phase = None
        self._last = 0.0
        self._first = None
        self._durations: dict[str, list[float]] = {}  # per phase: a fine-tuning epoch costs more than a head's
        self._phases: list[tuple[str, int, int]] = []  # (phase, first epoch, last epoch) from the plan
        self._tails: dict[str, float] = {}  # per phase: the last epoch's time after its last batch (validation)
        self._batched = False  # a training batch of the current epoch was seen
        self._scope = "run"  # what the ETA covers: "run", or "phase" while a later phase is not timed yet

    def _progress(self, **kw) -> dict:
        return {"path": self.path, "epochs": self.epochs, "epochs_done": self.epochs_done, "lr": self.lr,
                "eta_scope": self._scope, **kw}

    def on_train_begin(self, plan) -> None:
        self.epochs = int(getattr(plan, "epochs", 0) or 0)
        self.path = getattr(plan, "path", "")
        self.lr = getattr(plan, "lr", None) or getattr(getattr(plan, "config", None), "lr", None)
        self.warnings = list(getattr(plan, "warnings", []) or [])
        self.epochs_done = int(getattr(plan, "initial_epoch", 0) or 0)  # a continued run numbers on
        self._phases = [(str(ph["phase"]), int(ph["first_epoch"]), int(ph["last_epoch"]))
                        for ph in (getattr(plan, "phases", None) or []) if ph.get("epochs")]
        self._mark = self.clock()
        self.store.set_progress(self.run_id, self._progress(phase="starting", epoch=0, batch=0, batches=0, eta_s=None),
                                epochs=self.epochs)

    def on_batch_end(self, event) -> None:
        now = self.clock()
        if self._mark is None:
            self._mark = now
        phase, batch, batches = event.phase, int(event.batch), int(event.batches or 0)
        lr = getattr(event, "lr", None)
        if lr is not None:
            self.lr = float(lr)
        if self._phase == "features" and phase != "features":
            self._mark = self._last  # the first epoch began when the features pass ended
        if batch == 1 or self._first is None:
            self._first = now  # the first batch of a pass also pays for tracing: time the others
        self._phase, self._last = phase, now
        self._batched = self._batched or phase != "features"
        eta = self.eta(phase, int(event.epoch or 0), batch, batches, now)
        if batch >= batches or now - self._written >= self.every:
            self._written = now
            self.store.set_progress(self.run_id, self._progress(phase=phase, epoch=int(event.epoch or 0), batch=batch,
                                                                batches=batches, eta_s=eta))

    def eta(self, phase: str, epoch: int, batch: int, batches: int, now: float) -> float | None:
        """Seconds left: of the features pass while in it, else of this epoch plus the epochs to come
        (each at its own phase's pace; those of a phase not timed yet are left out, see ``_scope``)."""
        if not batch or not batches or self._mark is None:
            return None
        if batch > 1 and self._first is not None:
            per_batch = max(0.0, now - self._first) / (batch - 1)
        else:
            per_batch = max(0.0, now - self._mark) / batch
        rest = per_batch * (batches - batch)
        if phase == "features":
            return rest
        timed = self._durations.get(phase, [])
        if batch == 1 and not timed:  # the phase's first batch also traced (and compiled) its graph: no guess
            return None
        tail = self._tails.get(phase, 0.0)  # what follows the last batch: validation, the epoch's end
        this = self._per_epoch(phase) or per_batch * batches + tail
        if len(timed) == 1 and batch > 1:  # the one epoch timed so far also traced the graph
            this = min(this, per_batch * batches + tail)
        return rest + tail + self._epochs_left(max(epoch, self.epochs_done + 1), phase, this)

    def _epochs_left(self, current: int, phase: str, this: float) -> float:
        """Seconds of the epochs after ``current``: those of ``phase`` at ``this`` each, a later phase's at
        its own timed pace. Sets ``_scope`` to "phase" when a later phase has no timed epoch yet."""
        later = [(ph, max(first, current + 1), last) for ph, first, last in self._phases if last > current]
        if not later:
            later = [(phase, current + 1, self.epochs)]
        total, self._scope = 0.0, "run"
        for ph, first, last in later:
            per = this if ph == phase else self._per_epoch(ph)
            if per is None:
                self._scope = "phase"
                continue
            total += per * max(0, last - first + 1)
        return total

    def on_epoch_end(self, event) -> None:
        now = self.clock()
        logs = dict(getattr(event, "logs", {}) or {})
        row = {"epoch": int(logs.get("epoch", event.epoch)),
               "phase": logs.get("phase") or getattr(event, "phase", "") or "",
               "lr": logs.get("lr", getattr(event, "lr", None))}
        for k in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
            row[k] = logs.get(k)
        if logs.get("train_eval_accuracy") is not None:
            row["train_eval_accuracy"] = logs["train_eval_accuracy"]
        if row["lr"] is not None:
            self.lr = float(row["lr"])
        if self._mark is not None:
            self._durations.setdefault(row["phase"], []).append(now - self._mark)
        if self._batched:
            self._tails[row["phase"]] = max(0.0, now - self._last)
        self._batched = False
        self._mark = now
        self.epochs = max(self.epochs, int(getattr(event, "epochs", 0) or 0))
        self.epochs_done = row["epoch"]
        self.store.add_epoch(self.run_id, row, epochs=self.epochs, best_epoch=getattr(event, "best_epoch", None))
        self._written = now
        self.store.set_progress(self.run_id, self._progress(phase=row["phase"], epoch=row["epoch"], batch=0,
                                                            batches=0, eta_s=self._eta_after_epoch(row["phase"])))

    def _per_epoch(self, phase: str) -> float | None:
        """Mean of the phase's last epochs' durations (the first, which also traced the graph, only when alone)."""
        durations = self._durations.get(phase, [])
        recent = durations[1:][-3:] or durations[-1:]
        return sum(recent) / len(recent) if recent else None

    def _eta_after_epoch(self, phase: str) -> float | None:
        if self.epochs_done >= self.epochs:
            self._scope = "run"
            return 0.0
        nxt = next((ph for ph, first, last in self._phases if first <= self.epochs_done + 1 <= last), phase)
        per = self._per_epoch(nxt)
        if per is None:  # the next epoch starts a phase not timed yet (fine-tuning after the head)
            return None
        return per + self._epochs_left(self.epochs_done + 1, nxt, per)


# -- the process ----------------------------------------------------------------------------------------

def error_text(e: BaseException) -> str:
    """A failure in words: our own errors as they are, anything else with its type."""
    from core.config import ConfigError

    names = {"WeightsError", "DataError", "ModelFileError"}
    if isinstance(e, (ConfigError, ValueError)) or type(e).__name__ in names:
        return str(e)
    tb = traceback.format_exception_only(type(e), e)[-1].strip()
    return f"unexpected error: {tb[:500]}"


def run_job(store_path: str, job: dict) -> None:
    """Train the runs of ``job`` (one after another; those that differ in dropout only, on a locked
    base, side by side), writing everything into the store at ``store_path``.

    ``job``: ``{"data": path of data.json, "runs": [{"id", "config" (JSON), "run_dir"}, …]}``; a run
    with ``"continue": {"epochs", "fine_tune_layers", "fine_tune_epochs"}`` goes on from its folder.
    A failure marks that run failed with its error and the job's later runs as not run.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.config import ExperimentConfig

    store = RunStore(store_path)
    runs = job["runs"]
    try:
        data = data_from_spec(json.loads(Path(job["data"]).read_text(encoding="utf-8")))
    except Exception as e:  # the files moved or the spec is damaged
        for r in runs:
            store.finish(r["id"], "failed", error=f"data: cannot read the split: {error_text(e)}")
        return
    from core.train import continue_run, train_together, together_groups

    configs = [None if r.get("continue") else ExperimentConfig.from_json(r["config"]) for r in runs]
    # runs that differ in dropout only, on a locked base, train side by side (one fit of all heads)
    groups = together_groups(configs) if all(configs) else [[i] for i in range(len(runs))]
    failed = ""
    for group in groups:
        members = [runs[i] for i in group]
        stop = StoreStopFlag(store, members[0]["id"])  # a stop request reaches the whole job
        if failed or stop.is_set():
            for r in members:
                if failed:
                    store.finish(r["id"], "failed", error=f"not run: {failed}")
                else:
                    store.finish(r["id"], "stopped", outcome="stopped", error="")
            continue
        for r in members:
            store.start(r["id"], os.getpid())
        listeners = [StoreListener(store, r["id"]) for r in members]
        try:
            if members[0].get("continue"):  # more epochs or fine-tuning of a finished run, in its folder
                more = members[0]["continue"]
                results = [continue_run(members[0]["run_dir"], epochs=int(more.get("epochs") or 0),
                                        fine_tune_layers=more.get("fine_tune_layers") or None,
                                        fine_tune_epochs=more.get("fine_tune_epochs"), data=data,
                                        listeners=[listeners[0]], stop=stop)]
            else:
                results = train_together([configs[i] for i in group], data, listeners=[[x] for x in listeners],
                                         stop=stop, run_dirs=[r["run_dir"] for r in members],
                                         run_ids=[r["id"] for r in members])  # run.json names the run as the store does
        except Exception as e:
            failed = f"an earlier run failed ({error_text(e)[:200]})"
            for r in members:
                store.finish(r["id"], "failed", error=error_text(e))
            continue
        for r, listener, result in zip(members, listeners, results):
            rid = r["id"]
            done = listener._progress(phase="done", epoch=len(result.history), batch=0, batches=0, eta_s=0.0)
            done.update(timings={k: round(float(v), 3) for k, v in result.timings.items()}, params=result.params,
                        warnings=listener.warnings)
            store.set_progress(rid, done)
            if r.get("continue"):
                store.set_config(rid, result.config.to_json())  # the schedule the run has now been through
            store.finish(rid, "stopped" if result.status == "stopped" else "finished", outcome=result.status,
                         best_epoch=result.best_epoch, best_val_accuracy=result.best_val_accuracy)
        del results
