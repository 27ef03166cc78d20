"""The run store: every run of a workspace in one SQLite file (stdlib ``sqlite3``, WAL mode).

One row per run (its config, label, status, run folder, best epoch, the latest
batch progress) and one row per finished epoch, written as the epoch ends, so
a crash mid-run leaves every finished epoch readable. The training worker
process writes; page threads read. Each call opens its own short connection
(WAL lets readers and one writer work at once), so a store object can be
shared between threads and passed to another process by its path.

Statuses: ``queued`` → ``running`` → ``finished`` / ``stopped`` / ``failed``
(with the error text). No Streamlit and no TensorFlow here.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ACTIVE = ("queued", "running")
DONE = ("finished", "stopped", "failed")
STATUSES = ACTIVE + DONE
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "train_eval_accuracy")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,                -- train, compare
    grp TEXT NOT NULL,                 -- the job: a compare's members share it
    label TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,              -- ExperimentConfig JSON
    status TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT '',  -- completed, early-stopped, stopped (from core.train)
    error TEXT NOT NULL DEFAULT '',
    run_dir TEXT NOT NULL DEFAULT '',
    pid INTEGER,
    stop_requested INTEGER NOT NULL DEFAULT 0,
    epochs INTEGER NOT NULL DEFAULT 0, -- planned
    best_epoch INTEGER,
    best_val_accuracy REAL,
    progress TEXT NOT NULL DEFAULT '{}',  -- latest batch: phase, epoch, batch, batches, lr, eta_s
    meta TEXT NOT NULL DEFAULT '{}',   -- a compared run's place: setting, value, variant, seed
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch INTEGER NOT NULL,
    phase TEXT NOT NULL DEFAULT '',
    lr REAL,
    loss REAL,
    accuracy REAL,
    val_loss REAL,
    val_accuracy REAL,
    train_eval_accuracy REAL,          -- the training split re-scored in inference mode (comparisons)
    seconds REAL,
    PRIMARY KEY (run_id, epoch)
);
CREATE INDEX IF NOT EXISTS runs_grp ON runs(grp);
"""
# Columns added since the first stores were written: (table, column, declaration).
_ADDED = (("runs", "meta", "TEXT NOT NULL DEFAULT '{}'"), ("epochs", "train_eval_accuracy", "REAL"))


class RunStoreError(Exception):
    """The store cannot be used (e.g. a file that is not a run store); the message says why."""


@dataclass
class RunRecord:
    """One run as the store holds it."""

    id: str
    kind: str
    group: str
    label: str
    config: dict
    status: str
    outcome: str
    error: str
    run_dir: str
    pid: int | None
    stop_requested: bool
    epochs: int
    best_epoch: int | None
    best_val_accuracy: float | None
    progress: dict
    created: float
    started: float | None
    finished: float | None
    updated: float
    history: list[dict] = field(default_factory=list)  # filled by get(..., history=True)
    meta: dict = field(default_factory=dict)  # a compared run: setting, value, label, variant, seed

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def epochs_done(self) -> int:
        return int(self.progress.get("epochs_done", len(self.history)))

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class RunStore:
    """A workspace's runs in SQLite at ``path`` (created with its tables on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                for table, column, decl in _ADDED:  # an older store gains the new columns
                    if column not in {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        except sqlite3.DatabaseError as e:
            raise RunStoreError(f"run store: Expected a Transfer Lab runs.sqlite. Received: {self.path} ({e})") from None

    # -- connections -----------------------------------------------------------------------------

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a process crash
            yield db
        finally:
            db.close()

    def _write(self, sql: str, args=()) -> int:
        with self._connect() as db:
            return db.execute(sql, args).rowcount

    # -- writing ---------------------------------------------------------------------------------

    def create(self, config_json: str, kind: str = "train", label: str = "", run_dir: str | Path = "",
               group: str | None = None, epochs: int = 0, run_id: str | None = None, status: str = "queued",
               meta: dict | None = None) -> str:
        """Add a run (queued by default); returns its id."""
        run_id = run_id or new_run_id()
        now = time.time()
        self._write("INSERT INTO runs (id, kind, grp, label, config, status, run_dir, epochs, created, updated, meta) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, kind, group or run_id, label, config_json, status, str(run_dir), int(epochs), now, now,
                     json.dumps(meta or {})))
        return run_id

    def start(self, run_id: str, pid: int | None = None) -> None:
        now = time.time()
        self._write("UPDATE runs SET status='running', pid=?, started=?, updated=? WHERE id=?",
                    (pid if pid is not None else os.getpid(), now, now, run_id))

    def resume(self, run_id: str, pid: int | None = None, epochs: int | None = None, label: str | None = None) -> None:
        """A finished or stopped run goes on (more epochs, fine-tuning): queued again, its epochs kept,
        its last progress cleared and its clock restarted (a page shows "starting", not the old run's last
        batch and time), ``epochs`` the last epoch number it will now reach and ``label`` its new name
        (None: unchanged)."""
        now = time.time()
        self._write("UPDATE runs SET status='queued', outcome='', error='', stop_requested=0, finished=NULL, "
                    "progress='{}', epochs=COALESCE(?, epochs), label=COALESCE(?, label), pid=?, started=?, updated=? "
                    "WHERE id=?", (None if epochs is None else int(epochs), label, pid, now, now, run_id))

    def set_config(self, run_id: str, config_json: str) -> None:
        self._write("UPDATE runs SET config=?, updated=? WHERE id=?", (config_json, time.time(), run_id))

    def set_pid(self, run_id: str, pid: int) -> None:
        self._write("UPDATE runs SET pid=?, updated=? WHERE id=?", (pid, time.time(), run_id))

    def add_epoch(self, run_id: str, row: dict, epochs: int | None = None, best_epoch: int | None = None) -> None:
        """Record a finished epoch and the best so far: the trainer's ``best_epoch`` when given (its
        monitored metric), else the highest validation accuracy (first wins)."""
        vals = {k: _num(row.get(k)) for k in METRICS}
        epoch = int(row["epoch"])
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT OR REPLACE INTO epochs (run_id, epoch, phase, lr, loss, accuracy, val_loss, "
                       "val_accuracy, train_eval_accuracy, seconds) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (run_id, epoch, str(row.get("phase") or ""), _num(row.get("lr")), vals["loss"],
                        vals["accuracy"], vals["val_loss"], vals["val_accuracy"], vals["train_eval_accuracy"],
                        _num(row.get("seconds"))))
            best = db.execute("SELECT best_val_accuracy FROM runs WHERE id=?", (run_id,)).fetchone()
            va = vals["val_accuracy"]
            now = time.time()
            if best_epoch is not None and best is not None:
                got = db.execute("SELECT val_accuracy FROM epochs WHERE run_id=? AND epoch=?",
                                 (run_id, int(best_epoch))).fetchone()
                db.execute("UPDATE runs SET best_epoch=?, best_val_accuracy=?, updated=? WHERE id=?",
                           (int(best_epoch), got[0] if got else None, now, run_id))
            elif va is not None and best is not None and (best[0] is None or va > best[0]):
                db.execute("UPDATE runs SET best_epoch=?, best_val_accuracy=?, updated=? WHERE id=?",
                           (epoch, va, now, run_id))
            if epochs is not None:
                db.execute("UPDATE runs SET epochs=?, updated=? WHERE id=?", (int(epochs), now, run_id))
            db.execute("COMMIT")

    def set_progress(self, run_id: str, progress: dict, epochs: int | None = None) -> None:
        """The latest per-batch progress (a small JSON dict), replacing the previous one."""
        now = time.time()
        if epochs is None:
            self._write("UPDATE runs SET progress=?, updated=? WHERE id=?", (json.dumps(progress), now, run_id))
        else:
            self._write("UPDATE runs SET progress=?, epochs=?, updated=? WHERE id=?",
                        (json.dumps(progress), int(epochs), now, run_id))

    def finish(self, run_id: str, status: str, outcome: str = "", error: str = "",
               best_epoch: int | None = None, best_val_accuracy: float | None = None) -> None:
        """End a run: finished, stopped or failed (with the error). The best epoch given is the trainer's."""
        if status not in DONE:
            raise ValueError(f"status: Expected one of {', '.join(DONE)}. Received: {status!r}")
        now = time.time()
        with self._connect() as db:
            db.execute("UPDATE runs SET status=?, outcome=?, error=?, finished=?, updated=? WHERE id=?",
                       (status, outcome, error, now, now, run_id))
            if best_epoch is not None:
                db.execute("UPDATE runs SET best_epoch=?, best_val_accuracy=? WHERE id=?",
                           (int(best_epoch), _num(best_val_accuracy), run_id))

    def request_stop(self, run_id: str) -> None:
        """Ask the run (and the rest of its job) to stop at the next batch."""
        self._write("UPDATE runs SET stop_requested=1, updated=? WHERE grp=(SELECT grp FROM runs WHERE id=?)",
                    (time.time(), run_id))

    def stop_requested(self, run_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT stop_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return bool(row and row[0])

    def delete(self, run_id: str, remove_folder: bool = True) -> bool:
        """Remove a finished run's rows (and its run folder). Refuses an active run."""
        rec = self.get(run_id, history=False)
        if rec is None:
            return False
        if rec.active:
            raise RunStoreError(f"delete: Expected a finished, stopped or failed run. Received: {rec.label or run_id} "
                                f"is {rec.status}; stop it first")
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))
        if remove_folder and rec.run_dir and Path(rec.run_dir).is_dir():
            shutil.rmtree(rec.run_dir, ignore_errors=True)
        return True

    # -- reading ---------------------------------------------------------------------------------

    def get(self, run_id: str, history: bool = True) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                return None
            rec = _record(row)
            if history:
                rec.history = _history(db, run_id)
        return rec

    def history(self, run_id: str) -> list[dict]:
        with self._connect() as db:
            return _history(db, run_id)

    def list(self, kind: str | None = None, status: str | tuple | None = None, group: str | None = None,
             history: bool = False) -> list[RunRecord]:
        """Runs, newest first, optionally of one kind, status (or statuses) or job."""
        where, args = [], []
        if kind:
            where.append("kind=?")
            args.append(kind)
        if status:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args.extend(statuses)
        if group:
            where.append("grp=?")
            args.append(group)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created DESC, id DESC"
        with self._connect() as db:
            recs = [_record(r) for r in db.execute(sql, args).fetchall()]
            if history:
                for rec in recs:
                    rec.history = _history(db, rec.id)
        return recs

    def active(self) -> list[RunRecord]:
        return self.list(status=ACTIVE)

    def mark_lost(self, run_id: str, reason: str) -> bool:
        """A run whose process is gone: failed with ``reason``, its finished epochs kept."""
        now = time.time()
        return self._write("UPDATE runs SET status='failed', error=?, finished=?, updated=? "
                           "WHERE id=? AND status IN ('queued','running')", (reason, now, now, run_id)) > 0


def _num(x):
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if x != x else x  # NaN → NULL


def _record(row) -> RunRecord:
    return RunRecord(
        id=row["id"], kind=row["kind"], group=row["grp"], label=row["label"], config=json.loads(row["config"]),
        status=row["status"], outcome=row["outcome"], error=row["error"], run_dir=row["run_dir"], pid=row["pid"],
        stop_requested=bool(row["stop_requested"]), epochs=row["epochs"], best_epoch=row["best_epoch"],
        best_val_accuracy=row["best_val_accuracy"], progress=json.loads(row["progress"] or "{}"),
        created=row["created"], started=row["started"], finished=row["finished"], updated=row["updated"],
        meta=json.loads(row["meta"] or "{}"))


def _history(db, run_id: str) -> list[dict]:
    rows = db.execute("SELECT epoch, phase, lr, loss, accuracy, val_loss, val_accuracy, train_eval_accuracy, "
                      "seconds FROM epochs WHERE run_id=? ORDER BY epoch", (run_id,)).fetchall()
    out = [dict(r) for r in rows]
    for r in out:  # only comparisons re-score the training split
        if r["train_eval_accuracy"] is None:
            del r["train_eval_accuracy"]
    return out


def open_store(path: str | Path) -> RunStore:
    return RunStore(path)


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` is running (not gone, not a zombie waiting to be reaped)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return True

