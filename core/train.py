"""Training: the one place models are compiled, listeners, stop flag, RunResult.

A run is one or two **phases**:

1. ``head`` (every base layer locked) or ``train`` (some base layers unlocked
   by ``config.freeze``), for ``config.epochs`` epochs at ``config.lr``.
2. ``fine-tune`` (when ``config.fine_tune_layers`` > 0): the top N layers of the
   base are unlocked (BatchNorm stays locked unless ``train_batchnorm``), the
   whole model is recompiled at ``config.fine_tune_lr`` (default lr / 10) and
   trained ``config.fine_tune_epochs`` more epochs, numbered on.

Each phase picks its path:

* **Frozen base, no augmentation** (``features``): the base's (pooled) features
  are computed once per image and cached on disk, keyed by what they depend on;
  only the head trains on them. The head layers are the very layers of the
  whole model, so the saved model is the base joined to the trained head.
* **Anything else** (``full``): the whole model is fit on a ``tf.data`` pipeline
  of images decoded once and kept resized in memory (augmented by Keras
  preprocessing layers, batched, prefetched). With every base layer locked
  (augmentation on), the validation images' features are computed once and
  each epoch validates the head on them.

The best epoch by ``config.monitor`` (val_loss by default, or val_accuracy) is
tracked across phases; its weights are restored at the end of each phase and
of the run. ``config.early_stopping`` (patience) ends a phase early.

Progress goes out through :class:`TrainingListener` hooks (no-op defaults,
like Keras callbacks); a :class:`StopFlag` that a page or a signal sets ends
the run at the next batch, keeping every finished epoch. Training runs under a
``tf.distribute`` strategy: several visible GPUs give a ``MirroredStrategy``
automatically; a cluster gets ``MultiWorkerMirroredStrategy`` (see
:func:`make_strategy`).
"""
from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.config import ConfigError, ExperimentConfig
from core.data import DataError, DataSplits, cache_dir, load_arrays
from core.freeze import BATCHNORM_TYPES
from core.runstore import new_run_id

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "phase", "lr"]
PHASES = ("head", "train", "fine-tune")  # "features" in batch events: computing base features


# -- events and listeners --------------------------------------------------------------

@dataclass
class TrainPlan:
    run_id: str
    config: ExperimentConfig
    path: str  # the first phase's path: "features" (cached base features, head only) or "full"
    epochs: int  # the last epoch number this run reaches (epochs are numbered on across phases)
    train_size: int
    val_size: int
    class_names: list[str]
    params: dict
    warnings: list[str] = field(default_factory=list)
    phase: str = "head"  # the first phase: "head", "train" or "fine-tune"
    lr: float | None = None  # the first phase's learning rate
    phases: list[dict] = field(default_factory=list)  # {phase, epochs, lr, first_epoch, last_epoch}
    monitor: str = "val_loss"
    initial_epoch: int = 0  # epochs already done (a continued run)


@dataclass
class BatchEvent:
    run_id: str
    phase: str  # "features" (computing base features), "head", "train" or "fine-tune"
    epoch: int  # 1-based; 0 while computing features
    batch: int  # 1-based
    batches: int
    logs: dict = field(default_factory=dict)
    lr: float | None = None


@dataclass
class EpochEvent:
    run_id: str
    phase: str  # "head", "train" or "fine-tune"
    epoch: int  # 1-based, numbered on across phases
    epochs: int  # the last epoch number of the run
    logs: dict  # the history row: epoch, loss, accuracy, val_loss, val_accuracy, phase, lr, seconds
    lr: float | None = None
    best_epoch: int | None = None  # the best epoch so far by the monitored metric


class TrainingListener:
    """Hooks called by :func:`train`; override what you need (all default to no-ops)."""

    def on_train_begin(self, plan: TrainPlan) -> None: ...

    def on_batch_end(self, event: BatchEvent) -> None: ...

    def on_epoch_end(self, event: EpochEvent) -> None: ...

    def on_train_end(self, result: "RunResult") -> None: ...


class StopFlag:
    """Control flag a page (or Ctrl-C) sets; training stops at the next batch boundary."""

    def __init__(self):
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass
class RunResult:
    run_id: str
    config: ExperimentConfig
    class_names: list[str]
    history: list[dict]
    best_epoch: int | None  # the epoch whose weights the model has (best by config.monitor)
    best_val_accuracy: float | None  # validation accuracy at best_epoch
    status: str  # "completed", "early-stopped", "stopped"
    path: str  # the first phase's path
    model: object = None  # keras.Model at its best epoch (None if no epoch finished)
    data: DataSplits | None = None
    timings: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    run_dir: str | None = None  # the run folder, when saved
    monitor: str = "val_loss"
    best_value: float | None = None  # the monitored metric at best_epoch
    phases: list[dict] = field(default_factory=list)  # what ran: {phase, path, epochs, lr, first_epoch, last_epoch, status}

    def history_frame(self):
        import pandas as pd

        extra = [c for c in (self.history[0] if self.history else {}) if c not in HISTORY_COLUMNS]
        return pd.DataFrame(self.history, columns=HISTORY_COLUMNS + extra)


# -- compiling and distributing ----------------------------------------------------------

def make_optimizer(name: str, lr: float, fused: bool = False):
    """The optimizer ``name`` at learning rate ``lr``; ``fused``: see :func:`_fused_updates`."""
    import keras

    kinds = {"rmsprop": (keras.optimizers.RMSprop, {}), "adam": (keras.optimizers.Adam, {}),
             "sgd": (keras.optimizers.SGD, {"momentum": 0.9})}
    if name not in kinds:
        raise ValueError(f"optimizer: Expected rmsprop, adam or sgd. Received: {name!r}")
    cls, kwargs = kinds[name]
    return (_fused_updates(cls) if fused else cls)(learning_rate=lr, **kwargs)


def _fused_updates(cls):
    """``cls`` with each large variable's update compiled by XLA into one fused kernel.

    Keras applies an optimizer's update as one operation per term, each a full pass over the
    weights: for a layer of tens of millions of weights (Flatten → Dense 1024) that dominates a
    training step on a CPU. Fused, the update is one pass, with the same arithmetic (the same
    losses as the plain optimizer); the layers' own matrix products stay on TensorFlow's
    kernels (XLA's are slower on a CPU, and compiling the whole step would draw other dropout
    masks). Variables under :data:`FUSED_VARIABLE_WEIGHTS` keep the plain update (a compile
    each would cost more than it saves). Used only for models that train now, outside any
    ``tf.distribute`` strategy (see :func:`compile_model`); a model is saved compiled with the
    plain optimizer."""
    import tensorflow as tf

    class Fused(cls):
        def update_step(self, gradient, variable, learning_rate):
            if math.prod(variable.shape) < FUSED_VARIABLE_WEIGHTS:
                return super().update_step(gradient, variable, learning_rate)
            steps = self.__dict__.setdefault("_fused_steps", {})
            if id(variable) not in steps:
                plain = super().update_step
                steps[id(variable)] = tf.function(
                    lambda g: plain(g, variable, self._get_current_learning_rate()),
                    jit_compile=True, autograph=False)
            steps[id(variable)](gradient)

    Fused.__name__ = Fused.__qualname__ = f"Fused{cls.__name__}"
    return Fused


FUSED_HEAD_WEIGHTS = 2_000_000  # trainable weights of a model whose large variables get fused updates
FUSED_VARIABLE_WEIGHTS = 1_000_000  # ... and what makes a variable large
VAL_FEATURE_BATCH = 256  # validation batches on cached features (inference only: the same scores, up to rounding)


def compile_model(model, config: ExperimentConfig, lr: float | None = None, outputs: int = 1,
                  fuse: bool = False) -> bool:
    """The one place Transfer Lab compiles. Call again after any change to ``trainable``:
    Keras fixes the list of trainable weights at compile time. ``lr`` overrides
    ``config.lr`` (the fine-tuning phase); ``outputs`` > 1: heads side by side, one loss each
    (their sum is minimised, so each head gets its own loss's gradient).

    ``fuse``: the model is about to train. One with at least :data:`FUSED_HEAD_WEIGHTS`
    trainable weights (a Flatten → Dense 1024 head: tens of millions) gets an optimizer whose
    updates of large variables XLA fuses (:func:`_fused_updates`) when no ``tf.distribute``
    strategy is in scope: on a CPU about 1.5x faster a step on cached features, 2x with the
    base in the step (augmentation); the same losses. Such a model is compiled again without
    ``fuse`` before it is saved. A small model would only pay the compile time. Returns whether
    the updates are fused."""
    import keras

    fused = False
    if fuse and sum(math.prod(w.shape) for w in model.trainable_weights) >= FUSED_HEAD_WEIGHTS:
        import tensorflow as tf

        fused = not tf.distribute.has_strategy()
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.lr if lr is None else lr, fused=fused),
        loss="sparse_categorical_crossentropy" if outputs == 1 else ["sparse_categorical_crossentropy"] * outputs,
        # side by side, each head's own loss is logged as a metric ("xent"): Keras' per-output
        # loss trackers do not average as the one-model "loss" does
        metrics=["accuracy"] if outputs == 1 else
        [["accuracy", keras.metrics.SparseCategoricalCrossentropy(name="xent")] for _ in range(outputs)],
    )
    return fused


STRATEGIES = ("auto", "default", "mirrored", "multi-worker")


def make_strategy(kind: str = "auto"):
    """A ``tf.distribute`` strategy.

    ``auto``: ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names a cluster of
    several workers, ``MirroredStrategy`` when several GPUs are visible, else the
    default (one-device) strategy. ``default``, ``mirrored`` and ``multi-worker``
    ask for one of them.
    """
    import tensorflow as tf

    if kind not in STRATEGIES:
        raise ConfigError(f"strategy: Expected one of {', '.join(STRATEGIES)}. Received: {kind!r}")
    if kind == "auto":
        if _cluster_workers() > 1:
            kind = "multi-worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            kind = "mirrored"
        else:
            kind = "default"
    if kind == "multi-worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _cluster_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "") or "{}").get("cluster", {})
    except ValueError:
        raise ConfigError("TF_CONFIG: Expected JSON like {\"cluster\": {\"worker\": [...]}, \"task\": {...}}. "
                          f"Received: {os.environ.get('TF_CONFIG')[:200]!r}") from None
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker")) if isinstance(cluster, dict) else 0


# -- the run -------------------------------------------------------------------------------

_ARRAYS: dict[tuple, np.ndarray] = {}


def _arrays(paths: list[str], size: int) -> np.ndarray:
    """Decoded, resized images; kept for the next run on the same files (compare, reruns, phases)."""
    stats = []
    for p in paths:
        try:
            st = os.stat(p)
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append(None)
    key = (tuple(paths), size, hashlib.sha256(repr(stats).encode()).hexdigest())
    if key not in _ARRAYS:
        while len(_ARRAYS) >= 4:
            _ARRAYS.pop(next(iter(_ARRAYS)))
        _ARRAYS[key] = load_arrays(paths, size)
    return _ARRAYS[key]


def _decode_meanwhile(data: DataSplits, size: int):
    """Start decoding both splits on a thread while the model is built (decoding releases the
    GIL; building is mostly Python). Returns ``get(size)`` → (x_train, x_val): the arrays
    decoded meanwhile, or decoded then at the model's size if that differs."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="transfer-lab-decode")
    future = pool.submit(lambda: (_arrays(data.train.paths, size), _arrays(data.validation.paths, size)))
    pool.shutdown(wait=False)

    def get(model_size: int):
        try:
            arrays = future.result()
        except Exception:
            if model_size == size:
                raise
            arrays = None
        if model_size != size or arrays is None:
            return _arrays(data.train.paths, model_size), _arrays(data.validation.paths, model_size)
        return arrays

    return get


@dataclass
class _Phase:
    name: str  # "head", "train" or "fine-tune"
    epochs: int
    lr: float
    unlock_top: int = 0  # unlock the top N base layers before this phase (fine-tune)


def train(
    config: ExperimentConfig,
    data: DataSplits,
    listeners: list[TrainingListener] | tuple = (),
    stop: StopFlag | None = None,
    run_dir: str | Path | None = None,
    base=None,
    strategy=None,
    run_id: str | None = None,
) -> RunResult:
    """Train ``config`` on ``data``; save into ``run_dir`` if given. Returns a RunResult.

    ``strategy``: a ``tf.distribute`` strategy (default: :func:`make_strategy` ``("auto")``).
    ``run_id``: the run's id in ``run.json`` (the run store's, for runs it keeps; default: a new one).
    """
    config.validate()
    return _execute(config, data, listeners, stop, run_dir, base=base, strategy=strategy, run_id=run_id)


def continue_run(
    run_dir: str | Path,
    epochs: int = 0,
    fine_tune_layers: int | None = None,
    fine_tune_epochs: int | None = None,
    fine_tune_lr: float | None = None,
    data: DataSplits | None = None,
    listeners: list[TrainingListener] | tuple = (),
    stop: StopFlag | None = None,
    strategy=None,
) -> RunResult:
    """Continue a finished or stopped run from its folder, in place.

    Training starts from the run's saved model (the weights of its best epoch).
    ``epochs`` more epochs of the run's last phase (same locks, same learning
    rate) come first; then, with ``fine_tune_layers`` N > 0, a fine-tuning phase
    unlocks the top N base layers (BatchNorm locked unless train_batchnorm) for
    ``fine_tune_epochs`` (default config.fine_tune_epochs) at ``fine_tune_lr``
    (default config's, i.e. lr / 10). Epochs are numbered on; history.csv,
    run.json, config.json and model.keras in ``run_dir`` are rewritten with the
    history appended. ``data``: the run's data; by default it is loaded again
    from run.json's data root and must give the same train/validation files.
    """
    run_dir = Path(run_dir)
    info, config, history = read_run(run_dir)
    if not _is_count(epochs):
        raise ConfigError(f"epochs: Expected 0 or more epochs to add. Received: {epochs!r}")
    if fine_tune_layers is not None and not _is_count(fine_tune_layers):
        raise ConfigError(f"fine_tune_layers: Expected 0 or more top base layers to unlock. Received: {fine_tune_layers!r}")
    last_phase = (history[-1].get("phase") or "head") if history else "head"
    done = {name: sum(1 for h in history if (h.get("phase") == "fine-tune") == (name == "fine-tune"))
            for name in ("first", "fine-tune")}
    new = copy.deepcopy(config)  # config.json afterwards: the schedule the run went through
    phases: list[_Phase] = []
    if epochs:
        if last_phase == "fine-tune":
            phases.append(_Phase("fine-tune", epochs, config.resolved_fine_tune_lr(), config.fine_tune_layers))
            done["fine-tune"] += epochs
        else:
            phases.append(_Phase(last_phase, epochs, config.lr))
            done["first"] += epochs
    if fine_tune_layers:
        n_epochs = config.fine_tune_epochs if fine_tune_epochs is None else fine_tune_epochs
        if not _is_count(n_epochs):
            raise ConfigError(f"fine_tune_epochs: Expected an integer from 0 to 1000. Received: {n_epochs!r}")
        lr = config.resolved_fine_tune_lr() if fine_tune_lr is None else fine_tune_lr
        phases.append(_Phase("fine-tune", n_epochs, lr, fine_tune_layers))
        done["fine-tune"] += n_epochs
        new.fine_tune_layers = fine_tune_layers
        if fine_tune_lr is not None:
            new.fine_tune_lr = fine_tune_lr
    new.epochs = max(1, done["first"])
    if done["fine-tune"]:
        new.fine_tune_epochs = done["fine-tune"]
    else:  # stopped before its fine-tuning began: the config says what was done
        new.fine_tune_layers = 0
    phases = [p for p in phases if p.epochs > 0]
    if not phases:
        raise ConfigError("continue: Expected more epochs or a fine-tuning phase (fine_tune_layers > 0 with "
                          "fine_tune_epochs > 0). Received: nothing to add")
    problems = [p for p in new.problems() if not p.startswith("weights:")]  # the file may be gone: weights come from the model
    if problems:
        raise ConfigError(problems)
    model_file = run_dir / "model.keras"
    if not model_file.is_file():
        raise ConfigError(f"continue: Expected a run folder with a model.keras. Received: {run_dir} (no model: "
                          "the run ended before an epoch finished)")
    if data is None:
        data = _reload_data(info, config)
    unlocked = config.fine_tune_layers if any(h.get("phase") == "fine-tune" for h in history) else 0
    resume = _Resume(run_id=info.get("run_id") or run_dir.name, history=history, model_file=model_file,
                     unlocked_top=unlocked, timings=info.get("timings") or {}, phases=info.get("phases") or [])
    return _execute(new, data, listeners, stop, run_dir, strategy=strategy, phases=phases, resume=resume)


@dataclass
class _Resume:
    run_id: str
    history: list[dict]
    model_file: Path
    unlocked_top: int  # top base layers unlocked by an earlier fine-tuning phase
    timings: dict
    phases: list[dict]


def _execute(config, data, listeners, stop, run_dir, base=None, strategy=None, phases=None, resume=None,
             run_id=None) -> RunResult:
    import keras

    from core.freeze import param_counts
    from core.model import build_model

    stop = stop or StopFlag()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    decoded = _decode_meanwhile(data, config.resolved_image_size())
    strategy = strategy or make_strategy("auto")
    keras.utils.set_random_seed(config.seed)
    num_classes = len(data.class_names)
    with strategy.scope():
        if resume is not None and base is None:
            from core.bases import build_base

            # every weight comes from the saved model: no need for the original weights file
            base = build_base(config.base, config.resolved_image_size(), config.alpha, "none")
        built = build_model(config, num_classes, base=base)
        if resume is not None:
            _load_weights_from(built.model, resume.model_file)
            if resume.unlocked_top:
                _unlock_top(built, resume.unlocked_top, config)
        compile_model(built.model, config)  # the whole model, as locked; each phase compiles again
    timings["build_s"] = time.perf_counter() - t0

    if phases is None:
        phases = [_Phase("head" if built.base_frozen else "train", config.epochs, config.lr)]
        if config.fine_tunes():
            phases.append(_Phase("fine-tune", config.fine_tune_epochs, config.resolved_fine_tune_lr(), config.fine_tune_layers))
    from core.freeze import fine_tune_problem

    too_many = sorted({fine_tune_problem(built.base, config, ph.unlock_top) for ph in phases} - {None})
    if too_many:  # refused before the first epoch: a continued run's folder is left as it was
        raise ConfigError(too_many)
    before = list(resume.history) if resume else []
    run_id = resume.run_id if resume else (run_id or new_run_id())
    first_path = _path_of(built, config) if not phases[0].unlock_top else "full"
    params = param_counts(built.model)
    plan_phases, n = [], len(before)
    for ph in phases:
        plan_phases.append({"phase": ph.name, "epochs": ph.epochs, "lr": ph.lr, "first_epoch": n + 1,
                            "last_epoch": n + ph.epochs, "unlock_top": ph.unlock_top})
        n += ph.epochs
    plan = TrainPlan(run_id, config, first_path, n, len(data.train), len(data.validation),
                     list(data.class_names), params, built.warnings(config), phase=phases[0].name,
                     lr=phases[0].lr, phases=plan_phases, monitor=config.monitor, initial_epoch=len(before))
    for listener in listeners:
        listener.on_train_begin(plan)

    timings["decode_s"] = 0.0  # what waiting for the decoded images added (none: features from the cache)
    got: list = []

    def images():
        if not got:
            t = time.perf_counter()
            got.extend(decoded(built.image_size))
            timings["decode_s"] = time.perf_counter() - t
        return got

    y_train, y_val = data.train.labels, data.validation.labels

    recorder = _Recorder(run_id, config, listeners, stop, built.model, total_epochs=n, history=before)
    done_phases: list[dict] = list(resume.phases) if resume else []
    features = None
    fused_whole = False  # the whole model trained with fused updates: compiled plain again to be saved
    timings["fit_s"] = 0.0
    for ph, ph_plan in zip(phases, plan_phases):
        if stop.is_set():
            break
        with strategy.scope():
            if ph.unlock_top:
                _unlock_top(built, ph.unlock_top, config)
            path = _path_of(built, config)
            if path == "features":
                if features is None:
                    t, waited = time.perf_counter(), timings["decode_s"]
                    features = _cached_features(built, config, data, images, recorder)
                    # the base's pass, without the wait for decoding (decode_s)
                    timings["features_s"] = (timings.get("features_s", 0.0) + time.perf_counter() - t
                                             - (timings["decode_s"] - waited))
                fit_model = _head_model(built)
            else:
                fit_model = built.model
            fused_whole |= compile_model(fit_model, config, lr=ph.lr, fuse=True) and fit_model is built.model
        if path == "features":
            f_train, f_val = features
            if stop.is_set() or f_train is None:
                break
            fit_x, fit_y = _feature_dataset(f_train, y_train, config.batch_size, config.seed, ph.epochs,
                                            first_epoch=len(recorder.history)), None
            fit_kwargs = dict(steps_per_epoch=_steps(len(f_train), config.batch_size), shuffle=False)
            # dropout draws from the global seed: from here on, the same masks as the same
            # head side by side with others (train_together), on the same batches
            keras.utils.set_random_seed(config.seed)
            fit_val = _feature_dataset(f_val, y_val) if len(f_val) else None
            val_steps = _steps(len(f_val), VAL_FEATURE_BATCH)
            recorder.start_phase(ph.name, ph.lr, fit_model.weights)
            score_x = f_train
        else:
            x_train, x_val = images()
            fit_x, fit_y = _pipeline(x_train, y_train, config, ph.epochs, first_epoch=len(recorder.history)), None
            fit_val = _pipeline(x_val, y_val, config, train=False) if len(x_val) else None
            val_steps = _steps(len(x_val), config.batch_size)
            # each pipeline orders its batches itself
            fit_kwargs = dict(steps_per_epoch=_steps(len(x_train), config.batch_size), shuffle=False)
            recorder.start_phase(ph.name, ph.lr, built.model.weights)
            score_x = x_train  # the images as decoded: the pipeline's augmentation is not in the model
            if any(type(layer).__name__ in BATCHNORM_TYPES and layer.trainable for layer in built.base.layers):
                # BatchNorm learning from scratch: its moving statistics lag far behind the
                # weights on a small dataset, and inference (validation too) would see vanished
                # features. Re-estimate them from training images before each validation.
                recorder.validate = _validate_after_recalibration(built, x_train, fit_val, config.batch_size, val_steps)
                fit_val = None
            elif built.base_frozen and len(x_val):
                # a locked base gives the same validation features every epoch: one pass of the
                # base over the validation images, then each epoch validates the head alone
                t = time.perf_counter()
                f_val = _val_features(built, x_val, config.batch_size, recorder)
                timings["features_s"] = timings.get("features_s", 0.0) + time.perf_counter() - t
                if f_val is None:  # stopped meanwhile
                    break
                recorder.validate = _validate_on_features(built, config, f_val, y_val)
                fit_val = None
        if config.score_train:
            recorder.score = lambda model, x=score_x: inference_accuracy(model, x, y_train, config.batch_size)
        if config.class_weights:
            fit_kwargs["class_weight"] = data.class_weights()
        if fit_val is not None:  # one pass of a finite dataset (else Keras warns that it ran out)
            fit_kwargs["validation_steps"] = val_steps
        t = time.perf_counter()
        first = len(recorder.history)
        fit_model.fit(fit_x, fit_y, validation_data=fit_val, epochs=ph.epochs, verbose=0,
                      callbacks=[recorder.keras_callback()], **fit_kwargs)
        timings["fit_s"] += time.perf_counter() - t
        recorder.validate = recorder.score = None
        ran = len(recorder.history) - first
        done_phases.append({"phase": ph.name, "path": path, "lr": ph.lr, "epochs": ran,
                            "first_epoch": first + 1 if ran else None, "last_epoch": first + ran if ran else None,
                            "unlock_top": ph.unlock_top,
                            "status": "stopped" if recorder.stopped else ("early-stopped" if recorder.early_stopped else "completed")})
        recorder.restore_best()  # each phase goes on from the best weights so far
        if recorder.stopped:
            break

    if fused_whole:
        with strategy.scope():
            compile_model(built.model, config)
    last = done_phases[-1]["status"] if len(done_phases) > len(resume.phases if resume else []) else "stopped"
    status = "stopped" if recorder.stopped or stop.is_set() else last
    timings["total_s"] = time.perf_counter() - t0
    if resume is not None:
        timings["previous_total_s"] = float(resume.timings.get("total_s", 0.0)) + float(resume.timings.get("previous_total_s", 0.0))
    return _finish(recorder, built, data, status, first_path, timings, done_phases, run_dir)


def _finish(recorder, built, data, status, path, timings, phases, run_dir) -> RunResult:
    """The run's result at its best epoch (weights already restored), saved into ``run_dir`` if given."""
    from core.freeze import param_counts

    best = recorder.best
    best_row = recorder.history[best[0] - 1] if best else None
    config = recorder.config
    result = RunResult(
        run_id=recorder.run_id, config=config, class_names=list(data.class_names), history=recorder.history,
        best_epoch=best[0] if best else None,
        best_val_accuracy=best_row.get("val_accuracy") if best_row else None,
        status=status, path=path, model=built.model if recorder.history else None, data=data,
        timings=timings, params=param_counts(built.model), monitor=config.monitor,
        best_value=best[1] if best else None, phases=phases,
    )
    if run_dir is not None:
        from core.export import save_run

        save_run(result, run_dir)
        result.run_dir = str(run_dir)
    for listener in recorder.listeners:
        listener.on_train_end(result)
    return result


# -- several heads side by side (a comparison on a locked base) --------------------------------------

def together_key(config: ExperimentConfig) -> str | None:
    """Configs with the same key can train side by side (:func:`train_together`): every base
    layer locked, no augmentation, no fine-tuning, no class weights; they differ in dropout only."""
    if config.freeze != "all" or config.augment != "none" or config.fine_tunes() or config.class_weights:
        return None
    d = config.to_dict()
    d.pop("dropout")
    return json.dumps(d, sort_keys=True)


def together_groups(configs: list[ExperimentConfig]) -> list[list[int]]:
    """The indices of ``configs`` in groups that train side by side (first appearance order)."""
    groups: dict = {}
    for i, c in enumerate(configs):
        key = together_key(c)
        groups.setdefault(key if key is not None else f"alone-{i}", []).append(i)
    return list(groups.values())


def train_together(configs: list[ExperimentConfig], data: DataSplits, listeners=None, stop: StopFlag | None = None,
                   run_dirs=None, strategy=None, run_ids=None) -> list[RunResult]:
    """Train configs that differ only in their dropout at once, when each would train just its
    head on the same cached base features: the features are computed once, and one ``fit``
    trains every head side by side (separate losses, so separate gradients: each head learns as
    if alone, from the same initial weights, on the same batches). Each run keeps its own
    history, best epoch, early stopping and saved whole model. Configs that cannot go together
    (see :func:`together_key`) train one after another with :func:`train`.
    """
    import keras

    from core.bases import build_base
    from core.freeze import param_counts
    from core.model import build_model

    n = len(configs)
    listeners = list(listeners) if listeners is not None else [[] for _ in configs]
    run_dirs = list(run_dirs) if run_dirs is not None else [None] * n
    run_ids = list(run_ids) if run_ids is not None else [new_run_id() for _ in configs]
    for c in configs:
        c.validate()

    def one_by_one():
        return [train(c, data, ls, stop, d, strategy=strategy, run_id=rid)
                for c, ls, d, rid in zip(configs, listeners, run_dirs, run_ids)]

    if n < 2 or len({together_key(c) for c in configs}) != 1 or together_key(configs[0]) is None:
        return one_by_one()
    stop = stop or StopFlag()
    strategy = strategy or make_strategy("auto")
    first = configs[0]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    decoded = _decode_meanwhile(data, first.resolved_image_size())
    keras.utils.set_random_seed(first.seed)  # as train() does: the same base (weights none: its init) and heads
    with strategy.scope():
        base = build_base(first.base, first.resolved_image_size(), first.alpha, first.weights)
        # this group's own base, built here: locked, never trained, so every head's whole model
        # may hold the same one (each saved model gets its own copy of its weights)
        builts = [build_model(c, len(data.class_names), base=base, copy=False) for c in configs]
    timings["build_s"] = time.perf_counter() - t0
    if not all(b.base_frozen for b in builts):
        return one_by_one()
    recorders = []
    for rid, c, b, ls in zip(run_ids, configs, builts, listeners):
        phases = [{"phase": "head", "epochs": c.epochs, "lr": c.lr, "first_epoch": 1, "last_epoch": c.epochs,
                   "unlock_top": 0}]
        plan = TrainPlan(rid, c, "features", c.epochs, len(data.train), len(data.validation), list(data.class_names),
                         param_counts(b.model), b.warnings(c), phase="head", lr=c.lr, phases=phases, monitor=c.monitor)
        for listener in ls:
            listener.on_train_begin(plan)
        recorders.append(_Recorder(rid, c, ls, stop, b.model, total_epochs=c.epochs))

    timings["decode_s"] = 0.0

    def images():
        t = time.perf_counter()
        arrays = decoded(builts[0].image_size)
        timings["decode_s"] = time.perf_counter() - t
        return arrays

    y_train, y_val = data.train.labels, data.validation.labels
    t = time.perf_counter()
    f_train, f_val = _cached_features(builts[0], first, data, images, _Fanout(recorders, stop))
    timings["features_s"] = time.perf_counter() - t - timings["decode_s"]
    timings["fit_s"] = 0.0
    ran = False
    if f_train is not None and not stop.is_set():
        if not isinstance(f_train, np.memmap):  # a memmap stays on disk: read a batch at a time
            f_train = np.asarray(f_train, np.float32)
        f_val = np.asarray(f_val, np.float32)
        with strategy.scope():
            heads = [_head_model(b, name=f"head_{i}") for i, b in enumerate(builts)]
            inp = keras.Input(tuple(f_train.shape[1:]), name="features")
            joint = keras.Model(inp, [h(inp) for h in heads], name="heads_side_by_side")
            compile_model(joint, first, outputs=n, fuse=True)
        for rec, head in zip(recorders, heads):
            rec.start_phase("head", first.lr, head.weights)
        score = None
        if first.score_train:
            def score(model):
                return inference_accuracies(model, f_train, y_train, first.batch_size)
        t = time.perf_counter()
        keras.utils.set_random_seed(first.seed)  # the dropout masks each head would draw alone (see _execute)
        joint.fit(_feature_dataset(f_train, (y_train,) * n, first.batch_size, first.seed, first.epochs),
                  steps_per_epoch=_steps(len(f_train), first.batch_size), shuffle=False,
                  validation_data=_feature_dataset(f_val, (y_val,) * n) if len(f_val) else None,
                  validation_steps=_steps(len(f_val), VAL_FEATURE_BATCH), epochs=first.epochs, verbose=0,
                  callbacks=[_side_by_side_callback(recorders, stop, score)])
        timings["fit_s"] = time.perf_counter() - t
        ran = True
    timings["total_s"] = time.perf_counter() - t0
    timings["together"] = n
    results = []
    for rec, b, d in zip(recorders, builts, run_dirs):
        rec.restore_best()
        status = "stopped" if rec.stopped or stop.is_set() else ("early-stopped" if rec.early_stopped else "completed")
        done = [{"phase": "head", "path": "features", "lr": first.lr, "epochs": len(rec.history),
                 "first_epoch": 1 if rec.history else None, "last_epoch": len(rec.history) or None, "unlock_top": 0,
                 "status": status}] if ran else []
        results.append(_finish(rec, b, data, status, "features", dict(timings), done, d))
    return results


class _Fanout:
    """What computing the features needs of a recorder (stop, batch events), for several runs."""

    def __init__(self, recorders, stop):
        self.recorders, self.stop = recorders, stop

    def batch(self, *args):
        for r in self.recorders:
            r.batch(*args)


def _side_by_side_callback(recorders, stop, score):
    """The bridge from one joint fit to each head's recorder (its logs, best epoch, early stopping)."""
    import keras

    class _SideBySide(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.active = [True] * len(recorders)
            self.interrupted = False

        def on_epoch_begin(self, epoch, logs=None):
            now = time.perf_counter()
            for r in recorders:
                r._epoch_start = now

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            steps = self.params.get("steps") or 0
            for i, r in enumerate(recorders):
                if self.active[i]:
                    r.batch("head", len(r.history) + 1, batch + 1, steps,
                            {k: float(logs[f"head_{i}_{m}"]) for k, m in (("loss", "xent"), ("accuracy", "accuracy"))
                             if f"head_{i}_{m}" in logs})
            if stop.is_set():
                self.interrupted = True
                for r in recorders:
                    r.stopped = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.interrupted:
                return  # cut short by Stop: not a finished epoch
            logs = {k: float(v) for k, v in (logs or {}).items()}
            scores = score(self.model) if score is not None else None
            for i, r in enumerate(recorders):
                if not self.active[i]:
                    continue  # early-stopped: its later epochs are not its own (its best weights come back)
                own = {k: logs.get(f"{pre}head_{i}_{m}") for pre in ("", "val_")
                       for k, m in ((f"{pre}loss", "xent"), (f"{pre}accuracy", "accuracy"))}
                if scores is not None:
                    own["train_eval_accuracy"] = scores[i]
                r.epoch_end(own)
                if r.early_stopped:
                    self.active[i] = False
            if stop.is_set():
                for r in recorders:
                    r.stopped = True
                self.model.stop_training = True
            elif not any(self.active):
                self.model.stop_training = True

    return _SideBySide()


def _path_of(built, config) -> str:
    return "features" if built.base_frozen and config.augment == "none" else "full"


def _unlock_top(built, n: int, config) -> None:
    """Unlock the top ``n`` layers of the base on top of what ``config.freeze`` unlocked;
    BatchNorm stays locked unless the config lets it train."""
    from core.freeze import FreezeSpec, apply_freeze, batchnorm_trains

    names = [layer.name for layer in built.base.layers]
    locked = [a and b for a, b in zip(FreezeSpec.parse(config.freeze).locked_mask(names),
                                      FreezeSpec("top", n=n).locked_mask(names))]
    apply_freeze(built.base, FreezeSpec("unlock", names=tuple(nm for nm, lk in zip(names, locked) if not lk))
                 if not all(locked) else FreezeSpec("all"), batchnorm_trains(config))


def _load_weights_from(model, path: Path) -> None:
    """Copy every weight of a saved ``model.keras`` into ``model`` (the same architecture)."""
    import keras

    from core.export import ModelFileError

    try:
        saved = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:
        raise ModelFileError(f"model: cannot load {path.name}: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
    src, dst = saved.get_weights(), model.get_weights()
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst)):
        raise ModelFileError(f"model: Expected {path.name} to match the run's config.json. Received: a model with "
                             f"{len(src)} weight arrays where the config builds {len(dst)}")
    model.set_weights(src)


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= 1000


def read_run(run_dir: str | Path) -> tuple[dict, ExperimentConfig, list[dict]]:
    """A run folder's run.json, config and history (numbers as numbers)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"continue: Expected a run folder (with config.json, history.csv, run.json). Received: {run_dir}")
    config = ExperimentConfig.load(run_dir / "config.json")
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    return info, config, read_history(run_dir / "history.csv")


def read_history(path: str | Path) -> list[dict]:
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out = {}
                for k, v in row.items():
                    if k == "phase":
                        out[k] = v or "head"
                    elif k == "epoch":
                        out[k] = int(v)
                    elif v in ("", None):
                        out[k] = None
                    else:
                        try:
                            out[k] = float(v)
                        except ValueError:
                            out[k] = v
                out.setdefault("phase", "head")
                rows.append(out)
    except FileNotFoundError:
        pass
    return rows


def _reload_data(info: dict, config: ExperimentConfig) -> DataSplits:
    """The run's split again, from the file lists (and labels) in run.json."""
    from core.data import ImageDataset, load_dataset

    root = info.get("data_root")
    if not root or not Path(root).exists():
        raise DataError(f"data: Expected the run's data folder to continue it. Received: {root or 'none recorded'} "
                        "(missing; give the data again)")
    names = list(info.get("class_names") or [])
    splits = {}
    for split in ("train", "validation"):
        files, labels = info.get(f"{split}_files"), info.get(f"{split}_labels")
        if files is None or labels is None or len(files) != len(labels):
            break
        paths = [str(Path(root) / f) for f in files]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise DataError(f"data: Expected the {len(paths)} {split} files the run trained on. "
                            f"Received: {len(missing)} missing, e.g. {missing[0]}")
        splits[split] = ImageDataset(paths, np.asarray(labels, np.int32), names)
    if len(splits) == 2:
        return DataSplits(root, names, splits["train"], splits["validation"])
    data = load_dataset(root, val_split=config.val_split, seed=config.seed, test_split=config.test_split)
    from core.export import _relative

    for split, ds in (("train", data.train), ("validation", data.validation)):
        want = info.get(f"{split}_files")
        if want is not None and sorted(_relative(ds.paths, data.root)) != sorted(want):
            raise DataError(f"data: Expected the {len(want)} {split} files the run trained on in {root}. "
                            f"Received: {len(ds.paths)} files, not the same (the folder changed)")
    return data


def _head_model(built, name: str = "head_on_features"):
    """The head without its pooling layer, as a model over cached pooled features."""
    import keras

    feat_dim = built.head_layers[0].output.shape[1:]
    inp = keras.Input(tuple(feat_dim), name="features")
    x = inp
    for layer in built.head_layers[1:]:
        x = layer(x)
    return keras.Model(inp, x, name=name)


def _pipeline(x, y, config: ExperimentConfig, epochs: int = 1, first_epoch: int = 0, train: bool = True):
    """Images decoded once (``x``, uint8, in memory) as one ``tf.data`` pipeline for all ``epochs``
    of a fit (pass ``steps_per_epoch``, see :func:`_steps`): batches gathered in each epoch's
    order (:func:`_batches`) → float → augment → prefetch. ``train=False``: validation, the
    images in order, one pass, no augmentation.

    One iterator for the whole fit with tf.data's autotuning off, as for cached features: Keras
    makes a new iterator each epoch for a finite dataset, and with autotuning on ending the last
    one waited on the autotuner's thread (0.3-2.3 s at epoch starts, about 18 % of an augmented
    fit of 900 images at 160 px)."""
    import tensorflow as tf

    from core.augment import augmentation_model

    aug = augmentation_model(config.augment, config.seed) if train else None
    ds = _batches(x, y, config.batch_size, config.seed if train else None, epochs if train else 1, first_epoch)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b))
    if aug is not None:
        # one call at a time: the random layers draw from one seeded stream in batch order,
        # so a seed gives the same augmentations (each call is a whole batch, vectorised)
        ds = ds.map(lambda a, b: (aug(a, training=True), b))
    return _no_autotune(ds.prefetch(1))


def _feature_dataset(f: np.ndarray, y, batch_size: int = VAL_FEATURE_BATCH, seed: int | None = None,
                     epochs: int = 1, first_epoch: int = 0):
    """Cached features and labels (``y``: one array, or a tuple of them for heads side by side)
    as one ``tf.data`` pipeline for all ``epochs`` of a fit (pass ``steps_per_epoch``, see
    :func:`_steps`), in the orders of :func:`_batches`, or in order when ``seed`` is None
    (validation: batches of up to 256, one compiled shape and few steps).

    One iterator serves the whole fit, and tf.data's autotuning is off: with a new iterator each
    epoch (Keras' own array input), ending the last one waited on the autotuner's thread for
    0.4-0.6 s at many epoch starts, about 2 s of a 10-epoch head fit on rps_phone."""
    if not isinstance(f, np.memmap):  # a memmap (too large to load) is read a batch at a time
        f = np.asarray(f, np.float32)
    return _no_autotune(_batches(f, y, batch_size, seed, epochs, first_epoch).prefetch(1))


def _batches(x: np.ndarray, y, batch_size: int, seed: int | None, epochs: int, first_epoch: int):
    """``x`` and ``y`` (an array or a tuple of arrays) batched for ``epochs`` epochs, each in a
    new order drawn from ``seed`` and the epoch's number (counted from ``first_epoch``: a later
    phase or a continued run goes on to new orders; stateless: the same orders for the same seed,
    under any strategy), or in order when ``seed`` is None. ``x`` keeps its dtype, except a
    disk-backed ``np.memmap`` (cached features too large to load), whose batches are read from
    disk as float32, each batch's rows in file order."""
    import tensorflow as tf

    n, bs = len(x), max(1, int(batch_size))
    labels = tf.nest.map_structure(tf.convert_to_tensor, y)
    if isinstance(x, np.memmap):
        def read(i):
            return np.asarray(x[i], np.float32)

        def take(i):
            i = tf.sort(i)  # the same batch, read in file order
            xb = tf.numpy_function(read, [i], tf.float32, stateful=False)
            xb.set_shape((None, *x.shape[1:]))
            return xb, tf.nest.map_structure(lambda t: tf.gather(t, i), labels)
    else:
        xs = tf.convert_to_tensor(x)

        def take(i):
            return tf.gather(xs, i), tf.nest.map_structure(lambda t: tf.gather(t, i), labels)

    def epoch_order(e):
        if seed is None:
            order = tf.range(n, dtype=tf.int64)
        else:
            order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), e])))
        return tf.data.Dataset.from_tensor_slices(order).batch(bs)

    ds = tf.data.Dataset.range(int(first_epoch), int(first_epoch) + max(1, int(epochs))).flat_map(epoch_order)
    return ds.map(take)


def _no_autotune(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def _steps(n: int, batch_size: int) -> int:
    """Batches in one epoch of ``n`` examples (the last one partial)."""
    return max(1, -(-int(n) // max(1, int(batch_size))))


def inference_accuracy(model, x, y, batch_size: int = 64) -> float:
    """Accuracy of ``model`` on ``x`` in inference mode (dropout off, BatchNorm on its moving
    statistics), read in batches so a disk-backed array is never loaded whole."""
    return inference_accuracies(model, x, y, batch_size)[0]


def inference_accuracies(model, x, y, batch_size: int = 64) -> list[float]:
    """:func:`inference_accuracy` of each output of ``model`` (heads side by side: one per head)."""
    if not len(x):
        return [float("nan")] * len(model.outputs)
    step = max(64, int(batch_size))
    hits = np.zeros(len(model.outputs), np.int64)
    for i in range(0, len(x), step):
        probs = model.predict_on_batch(np.asarray(x[i:i + step], np.float32))
        outputs = probs if isinstance(probs, (list, tuple)) else [probs]
        yb = np.asarray(y[i:i + step])
        hits += [int(np.sum(np.argmax(np.asarray(p), axis=-1) == yb)) for p in outputs]
    return [float(h) / len(x) for h in hits]


def recalibrate_batchnorm(built, x: np.ndarray, batch_size: int, limit: int = 512) -> None:
    """Set the unlocked BatchNorm layers' moving statistics to the average over training batches."""
    layers = [layer for layer in built.base.layers if type(layer).__name__ in BATCHNORM_TYPES and layer.trainable]
    saved = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(range(0, min(len(x), limit), batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1)  # a running mean of the batch statistics
            xb = x[start:start + batch_size].astype(np.float32)
            built.base(built.preprocess(xb) if built.preprocess is not None else xb, training=True)
    finally:
        for layer, m in zip(layers, saved):
            layer.momentum = m


def _validate_after_recalibration(built, x_train, val, batch_size, val_steps):
    """``val``: the validation batches (:func:`_pipeline` with ``train=False``, ``val_steps`` of
    them), or None."""
    def validate(model) -> dict:
        recalibrate_batchnorm(built, x_train, batch_size)
        if val is None:
            return {}
        scores = model.evaluate(val, steps=val_steps, verbose=0, return_dict=True)
        return {"val_loss": float(scores["loss"]), "val_accuracy": float(scores["accuracy"])}

    return validate


def _val_features(built, x_val: np.ndarray, batch_size: int, recorder) -> np.ndarray | None:
    """The base's features of the validation images (float32, in memory); None if stopped."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="val-features-") as tmp:
        if not _compute_features(built, {"val": x_val}, batch_size, recorder, Path(tmp), len(x_val), float16=False):
            return None
        return np.array(np.load(Path(tmp) / "val.npy"))


def _validate_on_features(built, config, f_val, y_val):
    """Validation of the whole model with a locked base, as the head on the base's features:
    the same loss and accuracy as Keras' validation of the whole model (up to rounding)."""
    head = _head_model(built, name="head_validation")  # the model's own head layers
    compile_model(head, config)  # for evaluate only: never fit
    batches = _feature_dataset(f_val, y_val)  # as the head on cached features validates
    steps = _steps(len(f_val), VAL_FEATURE_BATCH)

    def validate(model) -> dict:
        scores = head.evaluate(batches, steps=steps, verbose=0, return_dict=True)
        return {"val_loss": float(scores["loss"]), "val_accuracy": float(scores["accuracy"])}

    return validate


# -- base features, once -------------------------------------------------------------------------

FEATURES_VERSION = "v2"
FLOAT16_BYTES = 1 << 30  # features larger than this (as float32) are kept as float16
MEMMAP_BYTES = 1 << 30  # feature files larger than this are read from disk (np.memmap), not loaded


def weights_digest(model) -> str:
    """A digest of a model's weight values (what its features depend on, whatever file they came from)."""
    h = hashlib.sha256()
    for w in model.weights:
        a = np.ascontiguousarray(np.asarray(w))
        h.update(f"{w.path}|{a.dtype}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def features_key(built, config: ExperimentConfig, data: DataSplits) -> str:
    """The feature cache key: dataset (files, labels, split, file sizes and times), base, its
    weight values (so a weights file's content, a seed of random weights, fine-tuned weights),
    cut, image size and the pooling applied before caching."""
    parts = [data.fingerprint(), config.base, str(config.alpha), weights_digest(built.base), str(config.cut),
             str(built.image_size), config.pooling, FEATURES_VERSION]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _cached_features(built, config, data, images, recorder):
    """Pooled (or flattened) base features for both splits, from disk when computed before.

    ``images()`` gives the decoded (x_train, x_val): asked only on a cache miss, after the
    base is traced (which happens while the images are still decoding).

    Written straight into ``.npy`` files (``np.lib.format.open_memmap``), float16 when large;
    read back whole, or as a memmap when larger than :data:`MEMMAP_BYTES`. Returns
    ``(None, None)`` when stopped before they were all computed."""
    import shutil

    key = features_key(built, config, data)
    folder = cache_dir() / "features" / key
    if (folder / "done").exists():
        try:
            return _load_features(folder)
        except (OSError, ValueError):
            pass
    tmp = folder.parent / f"{key}.tmp-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        total = len(data.train) + len(data.validation)
        extractor = _extractor(built, config.batch_size, total)  # traced while decoding goes on
        x_train, x_val = images()
        if not _compute_features(built, {"train": x_train, "val": x_val}, config.batch_size, recorder, tmp, total,
                                 extractor=extractor):
            return None, None
        (tmp / "done").write_text("ok")
        shutil.rmtree(folder, ignore_errors=True)  # a damaged earlier attempt
        try:
            tmp.replace(folder)
        except OSError:  # another run wrote it meanwhile
            pass
        return _load_features(folder if (folder / "done").exists() else tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_features(folder: Path):
    out = []
    for split in ("train", "val"):
        f = folder / f"{split}.npy"
        mm = np.load(f, mmap_mode="r")
        out.append(mm if mm.nbytes > MEMMAP_BYTES else np.array(mm))
    return tuple(out)


def _extractor(built, batch_size: int, total: int):
    """The model up to the head's first layer (pooling or Flatten) as ``f(batch) -> features``,
    traced for the one batch shape :func:`_compute_features` streams.

    One replica: a concrete ``tf.function`` of the model's inference call, traced without
    running it (0.4 s for MobileNetV2, against 1.0 s for Keras' predict function traced by
    predicting a batch of zeros), for batches of decoded 8-bit images, cast to float inside
    (a quarter of the bytes to copy into TensorFlow); other dtypes are traced when first seen.
    Several replicas (``MirroredStrategy``): Keras' predict, which spreads each batch over them."""
    import keras
    import tensorflow as tf

    extractor = keras.Model(built.model.inputs, built.head_layers[0].output)
    bs = max(1, min(int(batch_size), total))
    shape = (bs,) + tuple(built.model.inputs[0].shape[1:])
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        extractor.predict_on_batch(np.zeros(shape, np.float32))
        return lambda x: np.asarray(extractor.predict_on_batch(np.asarray(x, np.float32)))
    infer = tf.function(lambda x: extractor([tf.cast(x, tf.float32)], training=False), autograph=False)
    traced = {}

    def concrete(dtype):
        dtype = np.dtype(dtype)
        if dtype not in traced:
            traced[dtype] = infer.get_concrete_function(tf.TensorSpec(shape, tf.as_dtype(dtype)))
        return traced[dtype]

    concrete(np.uint8)  # decoded images: traced now, while they are still decoding
    return lambda x: concrete(x.dtype)(tf.constant(x)).numpy()


def _compute_features(built, splits: dict, batch_size: int, recorder, folder: Path, total: int,
                      float16: bool = True, extractor=None) -> bool:
    """One pass of the base over every split, as one stream of equal batches (the last one
    padded): the base is traced once, not once per batch shape (each trace of a large base
    costs about as much as a few batches). ``float16``: large features (over
    :data:`FLOAT16_BYTES`) are kept as float16."""
    extractor = extractor or _extractor(built, batch_size, total)
    bs = max(1, min(int(batch_size), total))
    batches = max(1, -(-total // bs))
    dim = tuple(int(d) for d in built.head_layers[0].output.shape[1:])
    big = float16 and total * int(np.prod(dim)) * 4 > FLOAT16_BYTES
    outs = {split: np.lib.format.open_memmap(folder / f"{split}.npy", mode="w+", shape=(len(x),) + dim,
                                             dtype=np.float16 if big else np.float32)
            for split, x in splits.items()}
    # the stream is the splits one after another: split k holds stream rows starts[k]:starts[k + 1]
    names = list(splits)
    starts = np.cumsum([0] + [len(splits[name]) for name in names])
    first = splits[names[0]]
    chunk = np.zeros((bs,) + first.shape[1:], first.dtype)
    for b in range(batches):
        if recorder.stop.is_set():
            outs.clear()
            return False
        lo, hi = b * bs, min((b + 1) * bs, total)
        pieces = []  # (split, its rows i:j, at this row of the chunk)
        for k, name in enumerate(names):
            first_row, end_row = max(lo, starts[k]), min(hi, starts[k + 1])  # this batch's stream rows of split k
            if first_row < end_row:
                pieces.append((name, first_row - starts[k], end_row - starts[k], first_row - lo))
        for name, i, j, at in pieces:
            chunk[at:at + j - i] = splits[name][i:j]
        chunk[hi - lo:] = 0
        f = extractor(chunk)
        for name, i, j, at in pieces:
            outs[name][i:j] = f[at:at + j - i]
        recorder.batch("features", 0, b + 1, batches, {})
    # no flush (msync): it waited for the disk, 4.2 s for the 150 MB of a generated set's Flatten
    # features on this project's machines; the page cache already holds them for every reader
    outs.clear()
    return True


# -- the bridge from Keras callbacks to listeners ---------------------------------------------------

def _snapshot(variables) -> list:
    """The variables' values now, as tensors: no copy is made here (0.2 ms, not 0.3 s for a
    32 M-weight Flatten head through NumPy); TensorFlow copies a variable's buffer on its next
    write while a snapshot still holds it (copy on write), so the values stay as they were."""
    import tensorflow as tf

    return [tf.identity(v) for v in variables]


class _Recorder:
    """Keeps history, best weights and the stop/early-stop state for one run (all its phases)."""

    def __init__(self, run_id, config, listeners, stop, model, total_epochs, history=()):
        self.run_id, self.config, self.listeners, self.stop = run_id, config, list(listeners), stop
        self.model = model  # the whole model: its weights are what "best" keeps
        self.total_epochs = total_epochs
        self.history: list[dict] = list(history)
        self.monitor = config.monitor
        self.best: tuple[int, float] | None = None  # (epoch, monitored value)
        self.best_weights = None  # values of ``tracked`` at the best epoch
        self.tracked = []  # the variables the current phase can change
        for row in self.history:  # a continued run: its saved model holds the best epoch's weights
            if self._better(row.get(self.monitor)):
                self.best = (row["epoch"], float(row[self.monitor]))
        self.validate = None  # a function(model) -> val logs, when Keras must not validate itself
        self.score = None  # a function(model) -> inference-mode train accuracy (config.score_train)
        self.stopped = False
        self.early_stopped = False
        self.phase, self.lr = "head", None
        self._interrupted = False
        self._phase_best = None
        self._bad_epochs = 0
        self._epoch_start = 0.0

    def _better(self, value, than=None) -> bool:
        if value is None:
            return False
        ref = (self.best[1] if self.best else None) if than is None else than
        if ref is None:
            return True
        return value < ref - 1e-7 if self.monitor == "val_loss" else value > ref + 1e-7

    def start_phase(self, phase: str, lr: float, variables) -> None:
        """A phase begins from the best weights so far (restored at the end of the last one):
        snapshot what this phase can change, so that restoring its best is exact."""
        self.tracked = list(variables)
        if self.best is not None:
            self.best_weights = _snapshot(self.tracked)
        self.phase, self.lr = phase, float(lr)
        self.early_stopped = False
        self._bad_epochs = 0
        self._phase_best = None

    def restore_best(self) -> None:
        if self.best_weights is not None:
            for v, w in zip(self.tracked, self.best_weights):
                v.assign(w)

    def batch(self, phase, epoch, batch, batches, logs):
        for listener in self.listeners:
            listener.on_batch_end(BatchEvent(self.run_id, phase, epoch, batch, batches, dict(logs),
                                             lr=None if phase == "features" else self.lr))

    def keras_callback(self):
        import keras

        rec = self

        class _Bridge(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                rec._epoch_start = time.perf_counter()
                self._batches = None

            def on_train_batch_end(self, batch, logs=None):
                if self._batches is None:
                    self._batches = self.params.get("steps") or 0
                rec.batch(rec.phase, len(rec.history) + 1, batch + 1, self._batches,
                          {k: float(v) for k, v in (logs or {}).items()})
                if rec.stop.is_set():
                    rec._interrupted = True
                    rec.stopped = True
                    self.model.stop_training = True

            def on_epoch_end(self, epoch, logs=None):
                if rec._interrupted:
                    return  # cut short by Stop: not a finished epoch, not recorded
                logs = {k: float(v) for k, v in (logs or {}).items()}
                if rec.validate is not None:
                    logs.update(rec.validate(self.model))
                if rec.score is not None:
                    logs["train_eval_accuracy"] = rec.score(self.model)
                rec.epoch_end(logs)
                if rec.stop.is_set():
                    rec.stopped = True
                    self.model.stop_training = True
                elif rec.early_stopped:
                    self.model.stop_training = True

        return _Bridge()

    def epoch_end(self, logs):
        epoch = len(self.history) + 1
        row = {"epoch": epoch}
        row.update({k: logs.get(k) for k in ("loss", "accuracy", "val_loss", "val_accuracy")})
        row["phase"] = self.phase
        row["lr"] = self.lr
        row["seconds"] = time.perf_counter() - self._epoch_start
        if "train_eval_accuracy" in logs:
            row["train_eval_accuracy"] = logs["train_eval_accuracy"]
        value = row.get(self.monitor)
        if self._better(value):
            self.best = (epoch, float(value))
            self.best_weights = _snapshot(self.tracked)
        self.history.append(row)
        patience = self.config.early_stopping
        if patience:
            if value is not None and (self._phase_best is None or self._better(value, than=self._phase_best)):
                self._phase_best, self._bad_epochs = value, 0
            else:
                self._bad_epochs += 1
                if self._bad_epochs >= patience:
                    self.early_stopped = True
        for listener in self.listeners:
            listener.on_epoch_end(EpochEvent(self.run_id, self.phase, epoch, self.total_epochs, dict(row),
                                             lr=self.lr, best_epoch=self.best[0] if self.best else None))
