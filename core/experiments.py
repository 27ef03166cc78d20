"""Runs that outlive a Streamlit script run, dropout comparisons, and plans.

A page starts a run with :func:`start_training` (or a comparison with
:func:`start_compare`): the job trains in its own worker process
(:mod:`core.worker`, ``spawn`` context) and writes its progress, each finished
epoch and its end into the workspace's run store (:mod:`core.runstore`). The
page holds a :class:`RunHandle`, which only reads the store: a widget event,
a page switch or a browser refresh (same workspace) loses nothing, and
:meth:`RunHandle.request_stop` asks the worker to stop at the next batch.
When a worker dies, the first reader that notices marks its run failed; the
finished epochs stay. One job at a time per workspace: a second is refused
with :class:`RunBusy`.

A comparison (planned by :mod:`core.compare`: one setting varied, the rest
held fixed, the same split and seeds) runs the same way, one run per value
and seed, each in the store with its place in the comparison.
Nothing here imports Streamlit, and TensorFlow is only imported in the worker
(or when a stored run's model is opened).
"""
from __future__ import annotations

import copy
import json
import multiprocessing
import re
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.baseinfo import release as release_base_facts
from core.compare import DEFAULT_RATES, CompareResult, ComparePlan, parse_rates, plan_comparison  # noqa: F401
from core.config import ConfigError, ExperimentConfig
from core.data import cache_dir
from core.runstore import ACTIVE, RunRecord, RunStore, new_run_id, pid_alive

STATUS_WORDS = {"queued": "starting", "running": "running", "finished": "finished", "stopped": "stopped",
                "failed": "failed"}


class RunBusy(Exception):
    """A run is already going in this workspace; the message names it."""


# -- what a page draws: built from the store ------------------------------------------------------

@dataclass
class Progress:
    """A job's progress as a page draws it (read from the store, never written by a page)."""

    kind: str = "train"  # "train" or "compare"
    status: str = "queued"  # the run in progress (or the last run): queued, running, finished, stopped, failed
    message: str = ""
    epoch: int = 0  # epochs finished in the run in progress
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    phase: str = ""
    lr: float | None = None
    eta_s: float | None = None
    eta_scope: str = "run"  # "phase": the ETA leaves out a later phase not timed yet (fine-tuning after the head)
    run_index: int = 1  # compare: 1-based index of the run in progress (the first, when several)
    runs: int = 1
    together: int = 1  # compare: runs going side by side (heads trained in one fit)
    label: str = ""
    run_id: str = ""
    history: list = field(default_factory=list)  # rows of the run in progress
    finished: list = field(default_factory=list)  # compare: (label, history) of finished runs
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    outcome: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    stop_requested: bool = False

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def fraction(self) -> float:
        """Overall progress in [0, 1], counting finished runs, epochs and batches."""
        if self.status == "finished" and self.run_index >= self.runs:
            return 1.0
        per_run = 0.0
        if self.epochs and (self.history or self.phase not in ("", "starting")):
            within = self.batch / self.batches if self.batches else 0.0
            if self.phase == "features":
                per_run = 0.1 * within
            else:
                done = len(self.history)
                per_run = 0.1 + 0.9 * min(1.0, (done + (within if done < self.epochs else 0)) / self.epochs)
        return max(0.0, min(1.0, (max(0, self.run_index - 1) + per_run * self.together) / max(1, self.runs)))

    def text(self) -> str:
        prefix = f"Run {self.run_index}/{self.runs} ({self.label}): " if self.kind == "compare" and self.runs > 1 else ""
        if self.together > 1:
            last = self.run_index + self.together - 1
            prefix = f"Runs {self.run_index}–{last}/{self.runs} side by side: "
        eta = f" · {self.eta_text()}" if self.eta_text() else ""
        stopping = " · stopping at the next batch…" if self.stop_requested and self.active else ""
        if self.status == "queued" or (self.status == "running" and self.phase in ("", "starting")):
            return prefix + "starting the training process and building the model…" + stopping
        if self.status == "running":
            if self.phase == "features":
                return prefix + f"computing base features once, batch {self.batch}/{self.batches}{eta}{stopping}"
            epoch = min(len(self.history) + 1, self.epochs)
            batch = f", batch {self.batch}/{self.batches}" if self.batches else ""
            return prefix + f"epoch {epoch}/{self.epochs}{batch}{eta}{stopping}"
        if self.status == "stopped":
            if self.message.lower().startswith("stopped"):  # "stopped after 3 epoch(s); …": said once
                return "S" + self.message[1:]
            return f"Stopped; {self.message}" if self.message else "Stopped"
        if self.status == "failed":
            return f"Failed: {self.message}"
        return self.message or "Done"

    def eta_text(self) -> str:
        """"about 2 min 05 s left" (or "… left in this phase"), "" when there is no estimate."""
        if self.eta_s is None or not self.active:
            return ""
        return f"about {format_seconds(self.eta_s)} left" + (" in this phase" if self.eta_scope == "phase" else "")

    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.time()) - self.started_at


def format_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def record_text(rec: RunRecord) -> str:
    """A finished run in one line: status, epochs, best validation accuracy (or its error)."""
    n = len(rec.history) if rec.history else rec.epochs_done
    if rec.status == "failed":
        kept = f"; {n} finished epoch(s) kept" if n else ""
        return f"failed: {rec.error}{kept}"
    if rec.active:
        return STATUS_WORDS[rec.status]
    outcome = rec.outcome or rec.status
    if not n:
        return f"{outcome} before an epoch finished"
    acc = f"{rec.best_val_accuracy:.1%}" if rec.best_val_accuracy is not None else "n/a"
    return f"{outcome} after {n} epoch(s); best validation accuracy {acc} at epoch {rec.best_epoch}"


# -- a stored run, as the pages use a result ------------------------------------------------------------

class StoredResult:
    """A finished (or stopped) run read back from the store and its run folder.

    Looks like :class:`core.train.RunResult` to the pages: ``history``,
    ``best_epoch``, ``status``, ``config``…; ``model`` loads the folder's
    ``model.keras`` on first use (TensorFlow only then), ``data`` rebuilds the
    run's own split from ``data.json``.
    """

    def __init__(self, rec: RunRecord):
        self.record = rec
        self.run_id = rec.id
        self.config = ExperimentConfig.from_dict(rec.config)
        self.history = [dict(r) for r in rec.history]
        self.best_epoch = rec.best_epoch
        self.best_val_accuracy = rec.best_val_accuracy
        self.status = rec.outcome or rec.status  # completed, early-stopped, stopped
        self.path = rec.progress.get("path", "")
        self.timings = dict(rec.progress.get("timings") or {})
        self.params = dict(rec.progress.get("params") or {})
        self.warnings = list(rec.progress.get("warnings") or [])
        self.run_dir = rec.run_dir or None
        self.label = rec.label
        self._model = None
        self._data = None
        self._class_names = None

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            names = None
            for name in ("labels.json", "data.json"):
                f = Path(self.run_dir or "") / name
                if self.run_dir and f.is_file():
                    try:
                        names = json.loads(f.read_text(encoding="utf-8"))["class_names"]
                        break
                    except (ValueError, KeyError, OSError):
                        continue
            self._class_names = list(names or [])
        return self._class_names

    @property
    def model_file(self) -> Path | None:
        f = Path(self.run_dir) / "model.keras" if self.run_dir else None
        return f if f is not None and f.is_file() else None

    @property
    def model(self):
        """The run's model at its best epoch (loaded once), or None when no model was saved."""
        if self._model is None and self.model_file is not None:
            from core.export import load_model

            self._model, names = load_model(self.model_file)
            if not self.class_names:
                self._class_names = names
        return self._model

    @property
    def data(self):
        if self._data is None and self.run_dir and (Path(self.run_dir) / "data.json").is_file():
            from core.worker import data_from_spec

            try:
                self._data = data_from_spec(json.loads((Path(self.run_dir) / "data.json").read_text(encoding="utf-8")))
            except (ValueError, KeyError, OSError):
                self._data = None
        return self._data

    def history_frame(self):
        return history_rows_frame(self.history)


def describe_result(result) -> str:
    if result is None:
        return ""
    if isinstance(result, CompareResult):
        return f"{len(result.runs)} run(s) compared" + (" (stopped)" if result.stopped else "")
    if not hasattr(result, "history"):
        return str(result)
    n = len(result.history)
    if not n:
        return f"{result.status} before an epoch finished"
    acc = f"{result.best_val_accuracy:.1%}" if result.best_val_accuracy is not None else "n/a"
    return f"{result.status} after {n} epoch(s); best validation accuracy {acc} at epoch {result.best_epoch}"


# -- worker processes and the handle a page keeps -------------------------------------------------------

_PROCESSES: dict[str, multiprocessing.process.BaseProcess] = {}  # job (group) id → its worker, this server only


def _job_alive(rec: RunRecord) -> tuple[bool, str]:
    """Whether the worker of ``rec``'s job still runs, and if not, why it ended (in words)."""
    proc = _PROCESSES.get(rec.group)
    if proc is not None:
        if proc.is_alive():
            return True, ""
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return False, f"the training process was killed ({name})"
        return False, f"the training process ended unexpectedly (exit code {code})"
    if rec.pid is None:
        return time.time() - rec.created < 60, "the training process never started"
    return pid_alive(rec.pid), "the training process is gone"


def reconcile(store: RunStore) -> list[RunRecord]:
    """Mark runs whose worker is gone as failed (finished epochs kept); return the runs still active."""
    alive = []
    for rec in store.active():
        ok, why = _job_alive(rec)
        if ok:
            alive.append(rec)
            continue
        fresh = store.get(rec.id, history=False)  # the worker may have ended it just now
        if fresh is not None and fresh.active:
            store.mark_lost(rec.id, why)
    return alive


class RunHandle:
    """A page's handle on a job (one run, or a comparison's runs) in the run store.

    Reads only the store; safe to keep in ``st.session_state`` and to rebuild
    after a refresh with :func:`latest_handle`.
    """

    def __init__(self, store_path: str | Path, group: str, kind: str = "train", run_id: str | None = None):
        self.store_path = str(store_path)
        self.group = group
        self.kind = kind
        self.run_id = run_id  # just this run of the job (a compare member opened on its own)
        self._result = None
        self._records: list[RunRecord] | None = None
        self._read_at = 0.0

    @property
    def store(self) -> RunStore:
        return RunStore(self.store_path)

    def records(self, fresh: bool = True) -> list[RunRecord]:
        """The job's runs in order (oldest first), with histories; checks the worker is alive."""
        if fresh or self._records is None or time.time() - self._read_at > 0.5:
            store = self.store
            recs = store.list(group=self.group, history=True)
            if any(r.active for r in recs):
                reconcile(store)
                recs = store.list(group=self.group, history=True)
            if self.run_id is not None:
                recs = [r for r in recs if r.id == self.run_id]
            self._records = list(reversed(recs))
            self._read_at = time.time()
        return self._records

    @property
    def run_ids(self) -> list[str]:
        return [r.id for r in self.records(fresh=False)]

    @property
    def running(self) -> bool:
        return any(r.active for r in self.records())

    @property
    def done(self) -> bool:
        return not self.running

    def request_stop(self) -> None:
        recs = self.records(fresh=False)
        if recs:
            self.store.request_stop(recs[0].id)

    def join(self, timeout: float | None = None, poll: float = 0.2) -> bool:
        """Wait until the job ends (True) or ``timeout`` seconds pass (False)."""
        end = None if timeout is None else time.time() + timeout
        while self.running:
            if end is not None and time.time() > end:
                return False
            time.sleep(poll)
        proc = _PROCESSES.get(self.group)
        if proc is not None:
            proc.join(5)
        return True

    def snapshot(self) -> Progress:
        recs = self.records()
        p = Progress(kind=self.kind, runs=max(1, len(recs)))
        if not recs:
            p.status, p.message = "failed", "the run is no longer in the store (deleted?)"
            return p
        current = next((r for r in recs if r.active), recs[-1])
        p.run_index = recs.index(current) + 1
        p.run_id, p.label, p.status = current.id, current.label, current.status
        p.history = list(current.history)
        p.finished = [(r.label, list(r.history)) for r in recs[: p.run_index - 1]]
        side = [r for r in recs if r.status == "running"]
        if current.active and len(side) > 1:  # heads trained side by side: every one of them is live
            p.together = len(side)
            p.finished += [(r.label, list(r.history)) for r in side if r is not current]
        prog = current.progress
        p.epochs = int(current.epochs or prog.get("epochs") or 0)
        p.epoch = len(current.history)
        p.phase = prog.get("phase", "")
        p.batch, p.batches = int(prog.get("batch") or 0), int(prog.get("batches") or 0)
        p.lr = prog.get("lr")
        if p.lr is None and current.history:
            p.lr = current.history[-1].get("lr")
        p.eta_s, p.eta_scope = prog.get("eta_s"), prog.get("eta_scope") or "run"
        p.best_epoch, p.best_val_accuracy, p.outcome = current.best_epoch, current.best_val_accuracy, current.outcome
        p.started_at = min((r.started for r in recs if r.started), default=None) or recs[0].created
        p.finished_at = current.finished if not current.active else None
        p.stop_requested = current.stop_requested
        if self.kind == "compare" and not current.active:
            failed = [r for r in recs if r.status == "failed"]
            stopped = any(r.status == "stopped" for r in recs)
            if failed:
                p.status, p.message = "failed", f"{failed[0].label}: {failed[0].error}"
            else:
                kept = sum(1 for r in recs if r.history)
                p.status = "stopped" if stopped else "finished"
                p.message = f"{kept} of {len(recs)} run(s) compared"
        else:
            p.message = current.error if current.status == "failed" else record_text(current)
        return p

    @property
    def error(self) -> str | None:
        p = self.snapshot()
        return p.message if p.status == "failed" else None

    @property
    def result(self):
        """A StoredResult (train) or CompareResult (compare) once the job ended; None while it runs or failed."""
        if self._result is not None:
            return self._result
        recs = self.records(fresh=False)
        if not recs or any(r.active for r in self.records()):
            return None
        recs = self.records(fresh=False)
        if self.kind == "compare":
            from core.compare import result_from_records

            self._result = result_from_records(recs, StoredResult)
        else:
            rec = recs[-1]
            if rec.status == "failed":
                return None
            self._result = StoredResult(rec)
        return self._result


def handle_for_run(store_path: str | Path, run_id: str) -> RunHandle | None:
    """A handle on one stored run (a compare member is handled as a single run)."""
    store = RunStore(store_path)
    rec = store.get(run_id, history=False)
    if rec is None:
        return None
    if rec.kind == "compare":
        return RunHandle(store_path, rec.group, "train", run_id=run_id)
    return RunHandle(store_path, rec.group, rec.kind)


def latest_handle(workspace=None, kind: str = "train") -> RunHandle | None:
    """The workspace's newest job of ``kind`` (to reattach after a refresh), or None."""
    path = store_path(workspace)
    if not Path(path).exists():
        return None
    recs = RunStore(path).list(kind=kind)
    return RunHandle(path, recs[0].group, kind) if recs else None


# -- starting jobs -----------------------------------------------------------------------------------------

def runs_root(workspace=None) -> Path:
    d = workspace.runs_dir if workspace is not None else cache_dir() / "runs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def store_path(workspace=None) -> Path:
    return Path(workspace.store_path) if workspace is not None else runs_root(None) / "runs.sqlite"


def open_store(workspace=None) -> RunStore:
    return RunStore(store_path(workspace))


def busy_message(rec: RunRecord) -> str:
    what = "A comparison" if rec.kind == "compare" else "A training run"
    return (f"{what} is already going in this workspace ({rec.label or rec.id}, {STATUS_WORDS[rec.status]}). "
            "Expected one run at a time: wait for it to finish or press Stop, then start again.")


def check_idle(workspace=None) -> None:
    """Raise :class:`RunBusy` when a job of this workspace is still going."""
    path = store_path(workspace)
    if Path(path).exists():
        alive = reconcile(RunStore(path))
        if alive:
            raise RunBusy(busy_message(alive[-1]))


def _launch(workspace, kind: str, configs: list[ExperimentConfig], labels: list[str], data, metas=None) -> RunHandle:
    from core.worker import run_job, write_data_spec

    check_idle(workspace)
    store = open_store(workspace)
    group = new_run_id()
    runs = []
    for i, (cfg, label) in enumerate(zip(configs, labels)):
        rid = new_run_id() if kind == "train" else f"{group}-{len(runs) + 1}"
        run_dir = runs_root(workspace) / rid
        spec = write_data_spec(data, run_dir / "data.json")
        store.create(cfg.to_json(), kind=kind, label=label, run_dir=run_dir, group=group, epochs=cfg.total_epochs(), run_id=rid,
                     meta=metas[i] if metas else None)
        runs.append({"id": rid, "config": cfg.to_json(), "run_dir": str(run_dir)})
    job = {"data": str(spec), "runs": runs}
    release_base_facts()  # the base-facts child's TensorFlow goes before the worker's comes
    proc = multiprocessing.get_context("spawn").Process(target=run_job, args=(str(store.path), job),
                                                         name=f"transfer-lab-{kind}", daemon=True)
    proc.start()
    _PROCESSES[group] = proc
    for r in runs:
        store.set_pid(r["id"], proc.pid)
    return RunHandle(store.path, group, kind)


def start_training(config: ExperimentConfig, data, workspace=None) -> RunHandle:
    """Validate, then train ``config`` on ``data`` in a worker process; returns its handle.

    Raises :class:`ConfigError` at once on a bad setting and :class:`RunBusy`
    when this workspace already has a job going. The run folder (model.keras,
    labels.json, history, …, plus the split as data.json) goes under the
    workspace's ``runs/``.
    """
    config = copy.deepcopy(config)
    problems = launch_problems(config)
    if problems:
        raise ConfigError(problems)
    return _launch(workspace, "train", [config], [run_label(config)], data)


def launch_problems(config: ExperimentConfig) -> list[str]:
    """Why ``config`` cannot be trained now: its own checks; then, each looked up once and kept,
    a lock or cut naming a layer the base does not have, ImageNet weights that cannot be had,
    a weights file that does not fit the base (so a page may ask on every rerun)."""
    problems = config.problems()
    if problems:
        return problems
    from core.baseinfo import base_facts
    from core.freeze import FreezeSpec, fine_tune_problem

    info, problem = base_facts(config.base, config.resolved_image_size(), float(config.alpha), config.weights)
    too_many = fine_tune_problem(info, config) if config.fine_tunes() else None
    if too_many:
        problems.append(too_many)
    spec = FreezeSpec.parse(config.freeze)
    if spec.mode in ("up-to", "unlock") or config.cut:
        from core.bases import unknown_cut

        names = info.names()
        try:
            spec.locked_mask(names)
        except ConfigError as e:
            problems.extend(e.problems)
        if config.cut and config.cut not in names:
            problems.append(unknown_cut(config.cut, names, info.name))
    return problems + ([problem] if problem else [])


def start_continue(workspace, run_id: str, epochs: int = 0, fine_tune_layers: int = 0,
                   fine_tune_epochs: int | None = None) -> RunHandle:
    """Train a finished or stopped run further in a worker (:func:`core.train.continue_run`), in place.

    ``epochs`` more of its last phase, then fine-tuning of the top ``fine_tune_layers`` base layers for
    ``fine_tune_epochs``. The run's row goes back to running; its epochs are numbered on.
    Raises ConfigError for a run that cannot go on, :class:`RunBusy` when a job is going.
    """
    from core.worker import run_job

    check_idle(workspace)
    store = open_store(workspace)
    rec = store.get(run_id, history=False)
    if rec is None:
        raise ConfigError(f"continue: Expected a run of this workspace. Received: {run_id!r}")
    if rec.status not in ("finished", "stopped") or not (Path(rec.run_dir) / "model.keras").is_file():
        raise ConfigError(f"continue: Expected a finished or stopped run with a saved model. Received: "
                          f"{rec.label or run_id}, {rec.status}" + ("" if rec.status == "failed" else ", no model.keras"))
    if not int(epochs or 0) and not (int(fine_tune_layers or 0) and (fine_tune_epochs is None or int(fine_tune_epochs))):
        raise ConfigError("continue: Expected more epochs or a fine-tuning phase (top layers > 0 and its epochs > 0). "
                          "Received: nothing to add")
    more = {"epochs": int(epochs or 0), "fine_tune_layers": int(fine_tune_layers or 0),
            "fine_tune_epochs": None if fine_tune_epochs is None else int(fine_tune_epochs)}
    if more["fine_tune_layers"]:  # refused here, before the run's row changes
        from core.baseinfo import base_facts
        from core.freeze import fine_tune_problem

        cfg = ExperimentConfig.from_dict(rec.config)
        info, _ = base_facts(cfg.base, cfg.resolved_image_size(), float(cfg.alpha), "none")
        too_many = fine_tune_problem(info, cfg, more["fine_tune_layers"])
        if too_many:
            raise ConfigError(f"continue: {too_many}")
    job = {"data": str(Path(rec.run_dir) / "data.json"),
           "runs": [{"id": rec.id, "config": json.dumps(rec.config), "run_dir": rec.run_dir, "continue": more}]}
    ft_epochs = 0 if not more["fine_tune_layers"] else (
        more["fine_tune_epochs"] if more["fine_tune_epochs"] is not None else int(rec.config.get("fine_tune_epochs") or 0))
    label = None
    if ft_epochs:  # named for what it now is, like a run planned with fine-tuning
        label = re.sub(r", fine-tune top \d+$", "", rec.label) + fine_tune_label(more["fine_tune_layers"])
    store.resume(rec.id, epochs=len(store.get(rec.id).history) + more["epochs"] + ft_epochs, label=label)
    release_base_facts()  # the base-facts child's TensorFlow goes before the worker's comes
    proc = multiprocessing.get_context("spawn").Process(target=run_job, args=(str(store.path), job),
                                                         name="transfer-lab-continue", daemon=True)
    proc.start()
    _PROCESSES[rec.group] = proc
    store.set_pid(rec.id, proc.pid)
    return RunHandle(store.path, rec.group, "train", run_id=rec.id if rec.kind == "compare" else None)


def run_label(config: ExperimentConfig) -> str:
    rates = "/".join(f"{r:g}" for r in config.dropout_rates())
    size = config.resolved_image_size()
    ft = fine_tune_label(config.fine_tune_layers) if config.fine_tunes() else ""
    return f"{config.base} {size}px, {config.weights_label()}, lock {config.freeze}, dropout {rates}{ft}"


def fine_tune_label(layers: int) -> str:
    return f", fine-tune top {int(layers)}"


# -- the Runs view: a workspace's runs as tables and curves ------------------------------------------

def run_name(rec: RunRecord) -> str:
    """How a run is named in lists and legends: its label and the end of its id (unique)."""
    return f"{rec.label or rec.kind} · {rec.id[-6:]}"


def filter_runs(records: list[RunRecord], text: str = "", statuses=None,
                sort: str = "best validation accuracy") -> list[RunRecord]:
    """Runs whose label, id, kind, status, error, base or weights hold every word of ``text``, of ``statuses``, sorted.

    ``sort``: "best validation accuracy" (highest first, runs without one last) or "newest".
    """
    words = str(text or "").lower().split()
    out = []
    for rec in records:
        cfg = rec.config
        hay = " ".join([rec.label, rec.id, rec.kind, rec.status, rec.outcome, rec.error, str(cfg.get("base", "")),
                        str(cfg.get("weights", "")), str(cfg.get("optimizer", ""))]).lower()
        if all(w in hay for w in words) and (not statuses or rec.status in statuses):
            out.append(rec)
    if sort == "newest":
        return sorted(out, key=lambda r: r.created, reverse=True)
    return sorted(out, key=lambda r: (r.best_val_accuracy is None, -(r.best_val_accuracy or 0.0), -r.created))


def runs_table(records: list[RunRecord]):
    """One row per run for the Runs view."""
    import pandas as pd

    rows = []
    for rec in records:
        n = len(rec.history) if rec.history else rec.epochs_done
        rows.append({
            "run": run_name(rec), "kind": rec.kind, "status": rec.outcome if rec.status == "finished" and rec.outcome
            else rec.status, "best val accuracy": rec.best_val_accuracy, "best epoch": rec.best_epoch,
            "epochs": f"{n}/{rec.epochs}", "started": pd.Timestamp(rec.created, unit="s").strftime("%Y-%m-%d %H:%M"),
            "time": format_seconds(rec.elapsed()) if rec.started else "", "error": rec.error, "id": rec.id})
    return pd.DataFrame(rows, columns=["run", "kind", "status", "best val accuracy", "best epoch", "epochs",
                                       "started", "time", "error", "id"])


def runs_curves(records: list[RunRecord]):
    """Long frame (run, epoch, metrics) of several runs, to overlay."""
    import pandas as pd

    frames = [history_rows_frame(rec.history, run_name(rec)) for rec in records if rec.history]
    if not frames:
        return pd.DataFrame(columns=["run", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"])
    return pd.concat(frames, ignore_index=True)


def delete_runs(workspace, run_ids) -> tuple[int, list[str]]:
    """Delete runs (rows and folders); returns (deleted, problems) — an active run is refused."""
    store = open_store(workspace)
    reconcile(store)
    deleted, problems = 0, []
    for rid in run_ids:
        try:
            deleted += bool(store.delete(rid))
        except Exception as e:  # RunStoreError: still running
            problems.append(str(e))
    return deleted, problems


# -- comparisons (the engine is core.compare) ------------------------------------------------------

def start_comparison(plan: ComparePlan, data, workspace=None) -> RunHandle:
    """A planned comparison (:func:`core.compare.plan_comparison`) in a worker process, each
    of its runs a run in the store (kind "compare") that knows its place (setting, value, seed).

    Raises ConfigError when a run's weights file does not fit its base, :class:`RunBusy` when a
    job is going.
    """
    problems = sorted({p for r in plan.runs for p in launch_problems(r.config)})
    if problems:
        raise ConfigError(problems)
    return _launch(workspace, "compare", [r.config for r in plan.runs], [r.label for r in plan.runs], data,
                   metas=[r.meta for r in plan.runs])


def start_compare(config: ExperimentConfig, data, rates=DEFAULT_RATES, workspace=None, seeds: int = 1,
                  placement: str = "each") -> RunHandle:
    """A dropout comparison in a worker; raises ConfigError at once on any bad rate."""
    plan = plan_comparison(config, "dropout", rates, seeds=seeds, placement=placement, val_size=len(data.validation))
    return start_comparison(plan, data, workspace)


def history_rows_frame(rows: list[dict], run: str | None = None):
    """A history frame from progress rows (what a fragment has while a run goes on)."""
    import pandas as pd

    from core.train import HISTORY_COLUMNS

    df = pd.DataFrame(list(rows), columns=HISTORY_COLUMNS + ([] if not rows else [c for c in rows[0] if c not in HISTORY_COLUMNS]))
    if run is not None:
        df["run"] = run
    return df


# -- plans: what a setting costs, without building the whole model -----------------------------------

def cut_index(base, cut: str | None) -> int:
    """Index of the last layer kept when the base is cut at ``cut`` (see core.freeze)."""
    from core.freeze import cut_index as _cut_index

    return _cut_index(base, cut)


def lock_param_counts(base, config: ExperimentConfig, num_classes: int) -> dict:
    """Trainable and locked parameters of the model ``config`` would build on ``base`` (see core.freeze)."""
    from core.freeze import lock_param_counts as _counts

    return _counts(base, config, num_classes)


# -- the experiment so far, in words (the sidebar) ---------------------------------------------------

def experiment_lines(config: ExperimentConfig | None, data=None, data_source: str | None = None,
                     run=None) -> list[tuple[str, str]]:
    """(label, text) pairs describing the experiment so far."""
    out = []
    if data is not None:
        out.append(("Dataset", f"{data_source or Path(data.root).name}: {data.summary()}"))
    else:
        out.append(("Dataset", "not chosen yet"))
    if config is not None:
        from core.bases import base_label

        out.append(("Base", f"{base_label(config)}, weights {config.weights_label()}"))
        locks = {"all": "all base layers locked", "none": "no layer locked (fine-tune all)"}
        lock = locks.get(config.freeze) or (f"locked up to {config.freeze[6:]}" if config.freeze.startswith("up-to:")
                                            else f"all but the top {config.freeze[4:]} layers locked")
        if config.cut:
            lock += f"; cut at {config.cut}"
        out.append(("Layers", lock))
        dense = " → ".join(str(u) for u in config.dense) or "no hidden layer"
        rates = ", ".join(f"{r:g}" for r in config.dropout_rates()) if _rates_ok(config) else str(config.dropout)
        out.append(("Head", f"{config.pooling_label()}, dense {dense}, dropout {rates}, augment {config.augment}, "
                            f"{config.optimizer} {config.lr:g}"))
    if run is not None:
        p = run.snapshot() if hasattr(run, "snapshot") else None
        result = getattr(run, "result", None) if p is None or not p.active else None
        if result is not None and getattr(result, "history", None) is not None:
            out.append(("Last run", f"{result.config.weights_label()}: {describe_result(result)}"))
        elif p is not None and p.active:
            out.append(("Last run", "running (its progress is on the Train page)"))
        elif p is not None:
            out.append(("Last run", p.text()))
    else:
        out.append(("Last run", "none yet"))
    return out


def _rates_ok(config) -> bool:
    try:
        config.dropout_rates()
        return True
    except (TypeError, ValueError):
        return False


def layer_rows(base, config: ExperimentConfig) -> list[dict]:
    """The layer table with each layer's state under ``config`` (see core.freeze.layer_rows)."""
    from core.freeze import layer_rows as _rows

    return _rows(base, config)
