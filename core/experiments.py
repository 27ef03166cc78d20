"""Runs that outlive a Streamlit script run, dropout comparisons, and plans.

A page starts a :class:`BackgroundRun` (one thread per run, owned by a
per-session handle) and polls its :class:`Progress` record from a fragment;
the Stop button sets the run's :class:`~core.train.StopFlag`. Nothing here
imports Streamlit, and TensorFlow is only imported when a run starts.

``compare_dropout`` trains the same experiment once per dropout rate, on the
same split with the same seed, so only the rate differs between runs.
"""
from __future__ import annotations

import copy
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.config import ConfigError, ExperimentConfig
from core.data import cache_dir
from core.train import TrainingListener

DEFAULT_RATES = (0.0, 0.2, 0.5, 0.8)


# -- the progress record a fragment polls ---------------------------------------------------

@dataclass
class Progress:
    """What a page needs to draw a run's progress. Updated by the run's thread."""

    kind: str = "train"  # "train" or "compare"
    status: str = "starting"  # starting, features, training, done, stopped, error
    message: str = ""
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    phase: str = ""
    run_index: int = 0  # compare: 1-based index of the run in progress
    runs: int = 1
    label: str = ""  # compare: e.g. "dropout 0.5"
    history: list = field(default_factory=list)  # rows of the run in progress
    finished: list = field(default_factory=list)  # compare: (label, history) of finished runs
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ("starting", "features", "training")

    def fraction(self) -> float:
        """Overall progress in [0, 1], counting finished runs, epochs and batches."""
        if not self.active:
            return 1.0 if self.status == "done" else self._raw()
        return self._raw()

    def _raw(self) -> float:
        per_run = 0.0
        if self.epochs:
            within = self.batch / self.batches if self.batches else 0.0
            if self.phase == "features":
                per_run = 0.1 * within
            else:
                done = len(self.history)
                per_run = 0.1 + 0.9 * min(1.0, (done + (within if done < self.epochs else 0)) / self.epochs)
        runs = max(1, self.runs)
        return max(0.0, min(1.0, (max(0, self.run_index - 1) + per_run) / runs))

    def text(self) -> str:
        prefix = f"Run {self.run_index}/{self.runs} ({self.label}): " if self.kind == "compare" and self.runs > 1 else ""
        if self.status == "starting":
            return prefix + "building the model…"
        if self.status == "features":
            return prefix + f"computing base features once, batch {self.batch}/{self.batches}"
        if self.status == "training":
            return prefix + f"epoch {min(len(self.history) + 1, self.epochs)}/{self.epochs}, batch {self.batch}/{self.batches}"
        if self.status == "stopped":
            return f"Stopped; {self.message}"
        if self.status == "error":
            return f"Failed: {self.message}"
        return self.message or "Done"

    def elapsed(self) -> float:
        return (self.finished_at or time.time()) - self.started_at


class ProgressListener(TrainingListener):
    """Writes training events into a :class:`Progress` record (under its lock)."""

    def __init__(self, progress: Progress, lock: threading.Lock):
        self.progress, self.lock = progress, lock

    def on_train_begin(self, plan) -> None:
        with self.lock:
            p = self.progress
            p.epochs, p.history, p.batch, p.batches, p.phase = plan.epochs, [], 0, 0, ""
            p.status = "features" if plan.path == "features" else "training"

    def on_batch_end(self, event) -> None:
        with self.lock:
            p = self.progress
            p.phase, p.batch, p.batches = event.phase, event.batch, event.batches
            p.status = "features" if event.phase == "features" else "training"

    def on_epoch_end(self, event) -> None:
        with self.lock:
            self.progress.history = self.progress.history + [dict(event.logs)]
            self.progress.epoch = event.epoch


# -- a run in a background thread ----------------------------------------------------------------

class BackgroundRun:
    """One training job (a run or a comparison) in its own thread.

    ``target(listeners, stop)`` does the work and returns the result. The
    thread, not the Streamlit script run, owns the job, so widget events and
    page switches do not interrupt it. Read :meth:`snapshot` for progress;
    :meth:`request_stop` ends it at the next batch, keeping finished epochs.
    """

    def __init__(self, target, kind: str = "train", runs: int = 1, label: str = ""):
        from core.train import StopFlag

        self.kind = kind
        self.stop_flag = StopFlag()
        self.lock = threading.Lock()
        self.progress = Progress(kind=kind, runs=runs, run_index=1, label=label)
        self.result = None
        self.error: str | None = None
        self._target = target
        self._thread = threading.Thread(target=self._main, name=f"transfer-lab-{kind}", daemon=True)

    @classmethod
    def finished(cls, result, kind: str = "train") -> "BackgroundRun":
        """A handle for an already finished result (for loading a run, and for tests)."""
        run = cls(lambda listeners, stop: result, kind=kind)
        run.result = result
        run.progress.status = "done"
        run.progress.finished_at = time.time()
        run.progress.message = describe_result(result)
        history = getattr(result, "history", None)
        if history is not None:
            run.progress.history = list(history)
            run.progress.epochs = getattr(result.config, "epochs", len(history))
        return run

    def start(self) -> "BackgroundRun":
        self._thread.start()
        return self

    def _main(self) -> None:
        listener = ProgressListener(self.progress, self.lock)
        try:
            result = self._target([listener], self.stop_flag)
        except Exception as e:  # shown on the page, never raised into Streamlit
            with self.lock:
                self.error = _error_text(e)
                self.progress.status = "error"
                self.progress.message = self.error
                self.progress.finished_at = time.time()
            return
        with self.lock:
            self.result = result
            stopped = self.stop_flag.is_set() or getattr(result, "status", "") == "stopped"
            self.progress.status = "stopped" if stopped else "done"
            self.progress.message = describe_result(result)
            self.progress.finished_at = time.time()

    def request_stop(self) -> None:
        self.stop_flag.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def done(self) -> bool:
        return not self.progress.active

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return self.done

    def snapshot(self) -> Progress:
        with self.lock:
            return copy.deepcopy(self.progress)


def _error_text(e: Exception) -> str:
    from core.bases import WeightsError
    from core.data import DataError

    if isinstance(e, (ConfigError, WeightsError, DataError, ValueError)):
        return str(e)
    tb = traceback.format_exception_only(type(e), e)[-1].strip()
    return f"unexpected error: {tb[:500]}"


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


# -- single runs ---------------------------------------------------------------------------------

def runs_root(workspace=None) -> Path:
    d = workspace.runs_dir if workspace is not None else cache_dir() / "runs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def start_training(config: ExperimentConfig, data, save: bool = True, workspace=None) -> BackgroundRun:
    """Validate, then train ``config`` on ``data`` in a background thread.

    Raises :class:`ConfigError` at once (before any thread) on a bad setting.
    With ``save`` the run folder (model.keras, labels.json, history, …) is
    written under the cache's ``runs/``.
    """
    config = copy.deepcopy(config).validate()

    def target(listeners, stop):
        from core.train import train

        run_dir = runs_root(workspace) / (time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]) if save else None
        result = train(config, data, listeners=listeners, stop=stop, run_dir=run_dir)
        return result

    return BackgroundRun(target, "train", label=config.weights_label()).start()


# -- comparing dropout rates -----------------------------------------------------------------------

@dataclass
class CompareResult:
    rates: list[float]
    runs: list  # RunResult per finished rate, in order
    stopped: bool = False

    def table(self):
        return compare_table(self.runs)

    def curves(self):
        return compare_curves(self.runs)

    def best(self):
        scored = [r for r in self.runs if r.best_val_accuracy is not None]
        return max(scored, key=lambda r: r.best_val_accuracy) if scored else None


def parse_rates(text) -> list[float]:
    """'0, 0.2, 0.5' → [0.0, 0.2, 0.5]; each rate 0 <= rate < 1, at least one, no repeats."""
    if isinstance(text, (list, tuple)):
        items = list(text)
    else:
        items = [t for t in str(text).replace(";", ",").replace(" ", ",").split(",") if t.strip()]
    if not items:
        raise ConfigError("rates: Expected one or more dropout rates, e.g. 0, 0.2, 0.5, 0.8. Received: nothing")
    rates, problems = [], []
    for item in items:
        try:
            r = float(item)
        except (TypeError, ValueError):
            problems.append(f"rates: Expected numbers separated by commas. Received: {str(item).strip()!r}")
            continue
        if not 0 <= r < 1:
            problems.append(f"dropout: Expected a rate with 0 <= rate < 1. Received: {r!r}")
        elif r in rates:
            problems.append(f"rates: Expected each rate once. Received: {r!r} twice")
        else:
            rates.append(r)
    if problems:
        raise ConfigError(problems)
    return rates


def compare_dropout(config: ExperimentConfig, data, rates=DEFAULT_RATES, listeners=(), stop=None,
                    on_run_begin=None, on_run_end=None) -> CompareResult:
    """Train ``config`` once per dropout rate (same data split, same seed)."""
    from core.train import StopFlag, train

    rates = parse_rates(rates)
    configs = [replace(copy.deepcopy(config), dropout=float(r)).validate() for r in rates]
    stop = stop or StopFlag()
    runs = []
    for i, (rate, cfg) in enumerate(zip(rates, configs)):
        if stop.is_set():
            break
        if on_run_begin:
            on_run_begin(i, rate)
        result = train(cfg, data, listeners=listeners, stop=stop)
        runs.append(result)
        if on_run_end:
            on_run_end(i, rate, result)
    return CompareResult(list(rates), runs, stopped=stop.is_set())


def start_compare(config: ExperimentConfig, data, rates=DEFAULT_RATES) -> BackgroundRun:
    """:func:`compare_dropout` in a background thread; raises ConfigError at once on bad rates."""
    rates = parse_rates(rates)
    for r in rates:
        replace(copy.deepcopy(config), dropout=float(r)).validate()
    handle: BackgroundRun | None = None

    def begin(i, rate):
        with handle.lock:
            p = handle.progress
            p.run_index, p.label, p.history, p.status = i + 1, f"dropout {rate:g}", [], "starting"

    def end(i, rate, result):
        with handle.lock:
            handle.progress.finished = handle.progress.finished + [(f"dropout {rate:g}", list(result.history))]

    def target(listeners, stop):
        return compare_dropout(config, data, rates, listeners, stop, on_run_begin=begin, on_run_end=end)

    handle = BackgroundRun(target, "compare", runs=len(rates), label=f"dropout {rates[0]:g}")
    return handle.start()


def compare_table(runs) -> "pd.DataFrame":
    """One row per run: rate, best val accuracy, epoch of best, final train–validation gap."""
    import pandas as pd

    rows = []
    for r in runs:
        rates = r.config.dropout_rates()
        last = r.history[-1] if r.history else {}
        gap = None
        if last.get("accuracy") is not None and last.get("val_accuracy") is not None:
            gap = float(last["accuracy"]) - float(last["val_accuracy"])
        rows.append({
            "dropout": rates[0] if len(set(rates)) == 1 else ", ".join(f"{x:g}" for x in rates),
            "best val accuracy": r.best_val_accuracy,
            "epoch of best": r.best_epoch,
            "final train accuracy": last.get("accuracy"),
            "final val accuracy": last.get("val_accuracy"),
            "final train–val gap": gap,
            "epochs": len(r.history),
            "status": r.status,
        })
    return pd.DataFrame(rows)


def compare_curves(runs) -> "pd.DataFrame":
    """Long frame (run, epoch, metric columns) for overlaid curves."""
    import pandas as pd

    frames = []
    for r in runs:
        df = r.history_frame().copy()
        rates = r.config.dropout_rates()
        df["run"] = f"dropout {rates[0]:g}" if len(set(rates)) == 1 else "dropout " + "/".join(f"{x:g}" for x in rates)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["run", "epoch", "loss", "accuracy", "val_loss", "val_accuracy"])
    return pd.concat(frames, ignore_index=True)


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
    """Index of the last layer kept when the base is cut at ``cut`` (the last layer if None)."""
    names = [layer.name for layer in base.layers]
    if not cut or cut not in names:
        return len(names) - 1
    return names.index(cut)


def lock_param_counts(base, config: ExperimentConfig, num_classes: int) -> dict:
    """Trainable and locked parameters of the model ``config`` would build on ``base``.

    Counts as ``model.summary()`` does (BatchNorm moving statistics are never
    trainable; unlocked BatchNorm scale/offset only with ``train_batchnorm``),
    using the (un-mutated) base's layers up to the cut, plus the head estimate.
    Raises ConfigError for an unknown ``up-to`` layer.
    """
    from core.freeze import BATCHNORM_TYPES, FreezeSpec, batchnorm_trains, count_params
    from core.head import head_param_estimate

    last = cut_index(base, config.cut)
    layers = base.layers[: last + 1]
    mask = FreezeSpec.parse(config.freeze).locked_mask([layer.name for layer in layers])
    trainable = locked = 0
    for layer, is_locked in zip(layers, mask):
        total = count_params(layer.weights)
        can_train = count_params(layer.trainable_weights) if layer.trainable else 0
        is_bn = type(layer).__name__ in BATCHNORM_TYPES
        t = 0 if is_locked or (is_bn and not batchnorm_trains(config)) else can_train
        trainable += t
        locked += total - t
    feature_shape = tuple(int(d) for d in layers[-1].output.shape[1:])
    head = head_param_estimate(feature_shape, config, num_classes) if len(feature_shape) == 3 else 0
    return {"base_trainable": trainable, "base_locked": locked, "head": head,
            "trainable": trainable + head, "locked": locked, "total": trainable + locked + head,
            "feature_shape": feature_shape}


def imagenet_problem(base: str, image_size: int, alpha: float) -> str | None:
    """None when ImageNet weights can be had for this base, else the reason (plain words)."""
    from core.bases import WeightsError, build_base

    try:
        build_base(base, image_size, alpha, "imagenet")
    except WeightsError as e:
        return str(e)
    except Exception as e:  # an odd size or alpha without published weights, …
        return f"ImageNet weights for {base}: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}"
    return None


def check_weights_file(base: str, image_size: int, alpha: float, path: str) -> str | None:
    """None when the weights file fits this base, else the reason from core.bases."""
    from core.bases import WeightsError, build_base

    try:
        build_base(base, image_size, alpha, path)
    except WeightsError as e:
        return str(e)
    return None


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
        from core.bases import BASES

        spec = BASES.get(config.base)
        label = spec.label if spec else config.base
        alpha = f", alpha {config.alpha:g}" if spec and spec.alphas else ""
        out.append(("Base", f"{label}{alpha}, {config.resolved_image_size() if spec else config.image_size} px, "
                            f"weights {config.weights_label()}"))
        locks = {"all": "all base layers locked", "none": "no layer locked (fine-tune all)"}
        lock = locks.get(config.freeze) or (f"locked up to {config.freeze[6:]}" if config.freeze.startswith("up-to:")
                                            else f"all but the top {config.freeze[4:]} layers locked")
        if config.cut:
            lock += f"; cut at {config.cut}"
        out.append(("Layers", lock))
        dense = " → ".join(str(u) for u in config.dense) or "no hidden layer"
        rates = ", ".join(f"{r:g}" for r in config.dropout_rates()) if _rates_ok(config) else str(config.dropout)
        out.append(("Head", f"{config.pooling.upper()}, dense {dense}, dropout {rates}, augment {config.augment}, "
                            f"{config.optimizer} {config.lr:g}"))
    if run is not None:
        result = getattr(run, "result", None)
        p = run.snapshot() if hasattr(run, "snapshot") else None
        if result is not None and getattr(result, "history", None) is not None:
            out.append(("Last run", f"{result.config.weights_label()}: {describe_result(result)}"))
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
    """The layer table (like ``model.summary()``) with each layer's state under ``config``.

    ``state`` is "trainable", "locked", "no weights" or "cut off" (after the cut
    layer, not part of the model). Raises ConfigError for an unknown lock layer.
    """
    from core.freeze import BATCHNORM_TYPES, FreezeSpec, batchnorm_trains, layer_table

    rows = layer_table(base, "none")
    last = cut_index(base, config.cut)
    names = [r["name"] for r in rows[: last + 1]]
    mask = FreezeSpec.parse(config.freeze).locked_mask(names)
    for i, row in enumerate(rows):
        is_bn = row["type"] in BATCHNORM_TYPES
        if i > last:
            row["trainable"], row["state"] = False, "cut off"
        elif not row["params"]:
            row["trainable"], row["state"] = False, "no weights"
        elif mask[i] or (is_bn and not batchnorm_trains(config)):
            row["trainable"] = False
            row["state"] = "locked" if mask[i] else "locked (BatchNorm)"
        else:
            row["trainable"], row["state"] = True, "trainable"
    return rows
