"""Training: the one place models are compiled, listeners, stop flag, RunResult.

Two paths, chosen from the experiment:

* **Frozen base, no augmentation**: the base's (pooled) features are computed
  once per image and cached; only the head trains on them, so later epochs
  cost only the head. The trained head layers are the very layers of the whole
  model, so the saved model is the base joined to the trained head.
* **Anything else** (augmentation or unlocked base layers): the whole model is
  fit on a ``tf.data`` pipeline of decoded, resized images (augmented by Keras
  preprocessing layers, batched, prefetched).

Progress goes out through :class:`TrainingListener` hooks (no-op defaults,
like Keras callbacks); a :class:`StopFlag` that a page or a signal sets ends
the run at the next batch, keeping every finished epoch.
"""
from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.config import ExperimentConfig
from core.data import DataSplits, cache_dir, load_arrays
from core.freeze import BATCHNORM_TYPES

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


# -- events and listeners --------------------------------------------------------------

@dataclass
class TrainPlan:
    run_id: str
    config: ExperimentConfig
    path: str  # "features" (cached base features, head only) or "full" (whole model fit)
    epochs: int
    train_size: int
    val_size: int
    class_names: list[str]
    params: dict
    warnings: list[str] = field(default_factory=list)


@dataclass
class BatchEvent:
    run_id: str
    phase: str  # "features" (computing base features) or "train"
    epoch: int  # 1-based; 0 while computing features
    batch: int  # 1-based
    batches: int
    logs: dict = field(default_factory=dict)


@dataclass
class EpochEvent:
    run_id: str
    phase: str
    epoch: int  # 1-based
    epochs: int
    logs: dict


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
    best_epoch: int | None
    best_val_accuracy: float | None
    status: str  # "completed", "early-stopped", "stopped"
    path: str
    model: object = None  # keras.Model at its best epoch (None if no epoch finished)
    data: DataSplits | None = None
    timings: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    run_dir: str | None = None  # the run folder, when saved

    def history_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history, columns=HISTORY_COLUMNS + [c for c in (self.history[0] if self.history else {}) if c not in HISTORY_COLUMNS])


# -- compiling ---------------------------------------------------------------------------

def make_optimizer(name: str, lr: float):
    import keras

    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    raise ValueError(f"optimizer: Expected rmsprop, adam or sgd. Received: {name!r}")


def compile_model(model, config: ExperimentConfig) -> None:
    """The one place Transfer Lab compiles. Call again after any change to ``trainable``:
    Keras fixes the list of trainable weights at compile time."""
    model.compile(
        optimizer=make_optimizer(config.optimizer, config.lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


# -- the run -------------------------------------------------------------------------------

_ARRAYS: dict[tuple, np.ndarray] = {}


def _arrays(paths: list[str], size: int) -> np.ndarray:
    """Decoded, resized images; kept for the next run on the same files (compare, reruns)."""
    key = (tuple(paths), size)
    if key not in _ARRAYS:
        while len(_ARRAYS) >= 4:
            _ARRAYS.pop(next(iter(_ARRAYS)))
        _ARRAYS[key] = load_arrays(paths, size)
    return _ARRAYS[key]


def train(
    config: ExperimentConfig,
    data: DataSplits,
    listeners: list[TrainingListener] | tuple = (),
    stop: StopFlag | None = None,
    run_dir: str | Path | None = None,
    base=None,
) -> RunResult:
    """Train ``config`` on ``data``; save into ``run_dir`` if given. Returns a RunResult."""
    import keras

    from core.model import build_model

    config.validate()
    stop = stop or StopFlag()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    num_classes = len(data.class_names)
    built = build_model(config, num_classes, base=base)
    compile_model(built.model, config)  # the whole model, as locked; the head path compiles its own
    timings["build_s"] = time.perf_counter() - t0

    run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    path = "features" if built.base_frozen and config.augment == "none" else "full"
    from core.freeze import param_counts

    params = param_counts(built.model)
    plan = TrainPlan(run_id, config, path, config.epochs, len(data.train), len(data.validation),
                     list(data.class_names), params, built.warnings(config))
    for listener in listeners:
        listener.on_train_begin(plan)

    t = time.perf_counter()
    x_train = _arrays(data.train.paths, built.image_size)
    x_val = _arrays(data.validation.paths, built.image_size)
    timings["decode_s"] = time.perf_counter() - t
    y_train, y_val = data.train.labels, data.validation.labels

    recorder = _Recorder(run_id, config, listeners, stop)
    if path == "features":
        t = time.perf_counter()
        f_train, f_val = _cached_features(built, config, data, x_train, x_val, recorder)
        timings["features_s"] = time.perf_counter() - t
        head_model = _head_model(built)
        compile_model(head_model, config)
        fit_model, fit_x, fit_val = head_model, f_train, (f_val, y_val)
    else:
        head_model = None
        fit_model = built.model
        fit_x = _pipeline(x_train, y_train, config)
        fit_val = (x_val.astype(np.float32), y_val)
        if any(type(layer).__name__ in BATCHNORM_TYPES and layer.trainable for layer in built.base.layers):
            # BatchNorm learning from scratch: its moving statistics lag far behind the
            # weights on a small dataset, and inference (validation too) would see vanished
            # features. Re-estimate them from training images before each validation.
            recorder.validate = _validate_after_recalibration(built, x_train, fit_val, config.batch_size)
            fit_val = None

    t = time.perf_counter()
    if not stop.is_set():
        recorder.weights_of = fit_model
        # the tf.data pipeline shuffles itself; arrays are shuffled by Keras
        fit_kwargs = dict(batch_size=config.batch_size, shuffle=True) if path == "features" else dict(shuffle=False)
        if config.class_weights:
            fit_kwargs["class_weight"] = data.class_weights()
        fit_model.fit(
            fit_x, y_train if path == "features" else None, validation_data=fit_val,
            epochs=config.epochs, verbose=0, callbacks=[recorder.keras_callback()], **fit_kwargs,
        )
    timings["fit_s"] = time.perf_counter() - t
    if recorder.best_weights is not None:
        fit_model.set_weights(recorder.best_weights)

    status = "stopped" if recorder.stopped else ("early-stopped" if recorder.early_stopped else "completed")
    if stop.is_set() and not recorder.stopped:
        status = "stopped"
    best = recorder.best
    result = RunResult(
        run_id=run_id, config=config, class_names=list(data.class_names), history=recorder.history,
        best_epoch=best[0] if best else None, best_val_accuracy=best[1] if best else None,
        status=status, path=path, model=built.model if recorder.history else None, data=data,
        timings=timings, params=params,
    )
    timings["total_s"] = time.perf_counter() - t0
    if run_dir is not None:
        from core.export import save_run

        save_run(result, run_dir)
        result.run_dir = str(run_dir)
    for listener in listeners:
        listener.on_train_end(result)
    return result


def _head_model(built):
    """The head without its pooling layer, as a model over cached pooled features."""
    import keras

    feat_dim = built.head_layers[0].output.shape[1:]
    inp = keras.Input(tuple(feat_dim), name="features")
    x = inp
    for layer in built.head_layers[1:]:
        x = layer(x)
    return keras.Model(inp, x, name="head_on_features")


def _pipeline(x, y, config: ExperimentConfig):
    import tensorflow as tf

    from core.augment import augmentation_model

    aug = augmentation_model(config.augment, config.seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.batch(config.batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    if aug is not None:
        ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


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


def _validate_after_recalibration(built, x_train, val, batch_size):
    def validate(model) -> dict:
        recalibrate_batchnorm(built, x_train, batch_size)
        scores = model.evaluate(val[0], val[1], batch_size=batch_size, verbose=0, return_dict=True)
        return {"val_loss": float(scores["loss"]), "val_accuracy": float(scores["accuracy"])}

    return validate


# -- base features, once -------------------------------------------------------------------------

def _features_key(built, config: ExperimentConfig, data: DataSplits) -> str | None:
    w = config.weights
    if w not in ("imagenet", "none"):
        st = Path(w).stat()
        w = f"{Path(w).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    elif w == "none":
        w = f"none|seed={config.seed}"  # random weights depend on the seed
    parts = [data.fingerprint(), config.base, str(config.alpha), w, str(config.cut), str(built.image_size),
             config.pooling, "v1"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _cached_features(built, config, data, x_train, x_val, recorder):
    """Pooled (or flattened) base features for both splits, from disk when computed before."""
    key = _features_key(built, config, data)
    folder = cache_dir() / "features"
    file = folder / f"{key}.npz"
    if file.exists():
        try:
            with np.load(file) as z:
                return z["train"], z["val"]
        except Exception:
            file.unlink(missing_ok=True)
    f_train = _compute_features(built, x_train, config.batch_size, recorder)
    f_val = _compute_features(built, x_val, config.batch_size, recorder)
    if f_train is None or f_val is None:
        return np.zeros((0,)), np.zeros((0,))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{key}.tmp.npz"
    np.savez(tmp, train=f_train, val=f_val)
    tmp.replace(file)
    return f_train, f_val


def _compute_features(built, x: np.ndarray, batch_size: int, recorder) -> np.ndarray | None:
    import keras

    extractor = keras.Model(built.model.inputs, built.head_layers[0].output)
    n = len(x)
    batches = max(1, -(-n // batch_size))
    out = None
    for b in range(batches):
        if recorder.stop.is_set():
            return None
        chunk = x[b * batch_size:(b + 1) * batch_size].astype(np.float32)
        f = np.asarray(extractor.predict_on_batch(chunk))
        if out is None:
            big = n * f[0].size * 4 > 1 << 30
            out = np.empty((n,) + f.shape[1:], np.float16 if big else np.float32)
        out[b * batch_size:b * batch_size + len(f)] = f
        recorder.batch("features", 0, b + 1, batches, {})
    return out


# -- the bridge from Keras callbacks to listeners ---------------------------------------------------

class _Recorder:
    """Keeps history, best weights and the stop/early-stop state for one run."""

    def __init__(self, run_id, config, listeners, stop):
        self.run_id, self.config, self.listeners, self.stop = run_id, config, list(listeners), stop
        self.history: list[dict] = []
        self.best: tuple[int, float] | None = None
        self.best_weights = None
        self.weights_of = None
        self.validate = None  # a function(model) -> val logs, when Keras must not validate itself
        self.stopped = False
        self.early_stopped = False
        self._interrupted = False
        self._best_loss = float("inf")
        self._bad_epochs = 0
        self._epoch_start = 0.0

    def batch(self, phase, epoch, batch, batches, logs):
        for listener in self.listeners:
            listener.on_batch_end(BatchEvent(self.run_id, phase, epoch, batch, batches, dict(logs)))

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
                rec.batch("train", len(rec.history) + 1, batch + 1, self._batches, {k: float(v) for k, v in (logs or {}).items()})
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
                rec.epoch_end(self.model, logs)
                if rec.stop.is_set():
                    rec.stopped = True
                    self.model.stop_training = True
                elif rec.early_stopped:
                    self.model.stop_training = True

        return _Bridge()

    def epoch_end(self, model, logs):
        epoch = len(self.history) + 1
        row = {"epoch": epoch}
        row.update({k: logs.get(k) for k in ("loss", "accuracy", "val_loss", "val_accuracy")})
        row["lr"] = float(np.asarray(model.optimizer.learning_rate))
        row["seconds"] = time.perf_counter() - self._epoch_start
        self.history.append(row)
        va = row["val_accuracy"]
        if va is not None and (self.best is None or va > self.best[1]):
            self.best = (epoch, float(va))
            self.best_weights = [np.array(w) for w in self.weights_of.get_weights()]
        patience = self.config.early_stopping
        if patience:
            if row["val_loss"] is not None and row["val_loss"] < self._best_loss - 1e-6:
                self._best_loss, self._bad_epochs = row["val_loss"], 0
            else:
                self._bad_epochs += 1
                if self._bad_epochs >= patience:
                    self.early_stopped = True
        for listener in self.listeners:
            listener.on_epoch_end(EpochEvent(self.run_id, "train", epoch, self.config.epochs, dict(row)))
