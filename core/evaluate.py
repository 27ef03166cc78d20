"""Evaluating a trained model: confusion matrix, per-class metrics, predictions.

Images reach the model through the one decode path (``core.images``), at the
model's own input size, exactly as in training and in the exported file.

The run-folder functions at the end (:func:`evaluate_run`, :func:`export_run`)
are what ``python -m core evaluate`` / ``export`` and the Evaluate page call.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EVALUATION_FILE = "evaluation.json"
FORMATS = ("keras", "tflite", "script")


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts ``cm[true, predicted]`` as an ``(N, N)`` int array."""
    y_true = np.asarray(y_true, int).ravel()
    y_pred = np.asarray(y_pred, int).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels: Expected as many predictions as labels. Received: {y_pred.size} and {y_true.size}")
    cm = np.zeros((num_classes, num_classes), int)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def per_class_metrics(cm: np.ndarray, class_names: list[str]):
    """Precision, recall, F1 and support per class, from a confusion matrix."""
    import pandas as pd

    cm = np.asarray(cm, float)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return pd.DataFrame({
        "class": list(class_names),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(int),
    })


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the share of each true class predicted as each class); empty rows stay 0."""
    cm = np.asarray(cm, float)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def confusion_frame(cm: np.ndarray, class_names: list[str], normalize: bool = False):
    """The confusion matrix as a DataFrame: rows are true classes, columns predicted.

    ``normalize``: each row as fractions of that true class (rows sum to 1)."""
    import pandas as pd

    values = normalize_rows(cm) if normalize else np.asarray(cm, int)
    df = pd.DataFrame(values, index=list(class_names), columns=list(class_names))
    df.index.name = "true"
    df.columns.name = "predicted"
    return df


@dataclass
class Evaluation:
    split: str  # "test", "validation", or what was scored ("data: photos/")
    class_names: list[str]
    paths: list[str]
    y_true: np.ndarray
    probs: np.ndarray
    images: np.ndarray | None = field(default=None, repr=False)  # the decoded (N, S, S, 3) uint8 inputs

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if len(self.probs) else np.zeros(0, int)

    @property
    def accuracy(self) -> float:
        return float((self.y_pred == self.y_true).mean()) if len(self.y_true) else float("nan")

    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.y_true, self.y_pred, len(self.class_names))

    def confusion_frame(self, normalize: bool = False):
        return confusion_frame(self.confusion(), self.class_names, normalize)

    def per_class(self):
        return per_class_metrics(self.confusion(), self.class_names)

    def mistake_indices(self, limit: int | None = None) -> list[int]:
        """Indices of misclassified images, most confident mistakes first."""
        wrong = np.flatnonzero(self.y_pred != self.y_true)
        conf = self.probs[wrong, self.y_pred[wrong]] if len(wrong) else np.zeros(0)
        order = wrong[np.argsort(-conf, kind="stable")]
        return [int(i) for i in order[:limit]]

    def mistakes(self, limit: int | None = None):
        """The misclassified files, most confident mistakes first."""
        import pandas as pd

        rows = [{
            "file": self.paths[i],
            "true": self.class_names[int(self.y_true[i])],
            "predicted": self.class_names[int(self.y_pred[i])],
            "probability": float(self.probs[i, self.y_pred[i]]),
        } for i in self.mistake_indices(limit)]
        return pd.DataFrame(rows, columns=["file", "true", "predicted", "probability"])

    def to_dict(self, mistakes: int = 50) -> dict:
        """What ``evaluation.json`` holds: split, counts, accuracy, per-class scores, confusion."""
        per_class = self.per_class()
        return {
            "split": self.split,
            "images": int(len(self.y_true)),
            "accuracy": None if not len(self.y_true) else self.accuracy,
            "class_names": list(self.class_names),
            "per_class": [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                          for row in per_class.to_dict("records")],
            "confusion": self.confusion().tolist(),
            "confusion_rows": "true class", "confusion_columns": "predicted class",
            "mistakes": self.mistakes(mistakes).to_dict("records"),
        }

    def table_text(self) -> str:
        """The per-class table as aligned text (what ``python -m core evaluate`` prints)."""
        df = self.per_class()
        width = max([len("class")] + [len(c) for c in self.class_names])
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for r in df.itertuples(index=False):
            lines.append(f"{r[0]:<{width}}  {r.precision:9.3f}  {r.recall:6.3f}  {r.f1:5.3f}  {r.support:7d}")
        n = len(self.y_true)
        acc = f"{self.accuracy:.3f}" if n else "-"
        lines.append(f"{'accuracy':<{width}}  {acc:>24}  {n:7d}")
        return "\n".join(lines)


def evaluation_split(data) -> tuple[str, object]:
    """The split to score: the held-out test split when there is one, else validation."""
    if getattr(data, "test", None) is not None and len(data.test):
        return "test", data.test
    return "validation", data.validation


def evaluate_model(model, dataset, class_names: list[str], split: str = "validation",
                   keep_images: bool = False) -> Evaluation:
    """Predict every image of an :class:`~core.data.ImageDataset` and keep the probabilities.

    The dataset's labels index ``dataset.class_names``; they are mapped to the
    model's ``class_names`` by name (a class the model does not know is refused).
    """
    from core.data import load_arrays
    from core.predict import model_image_size, predict_arrays

    labels = _labels_for(dataset, class_names)
    size = model_image_size(model)
    x = load_arrays(list(dataset.paths), size)
    probs = predict_arrays(model, x) if len(x) else np.zeros((0, len(class_names)), np.float32)
    return Evaluation(split, list(class_names), list(dataset.paths), labels, np.asarray(probs),
                      x if keep_images else None)


def _labels_for(dataset, class_names: list[str]) -> np.ndarray:
    labels = np.asarray(dataset.labels, int)
    names = list(getattr(dataset, "class_names", None) or class_names)
    if names == list(class_names):
        return labels
    unknown = sorted(set(names[i] for i in set(labels.tolist())) - set(class_names))
    if unknown:
        from core.data import DataError

        raise DataError(f"classes: Expected only the model's classes ({', '.join(class_names)}). "
                        f"Received: {', '.join(unknown)}")
    index = {n: i for i, n in enumerate(class_names)}
    return np.array([index[names[y]] for y in labels], int)


def predict_uploads(model, class_names: list[str], files: list[tuple[str, bytes]], top: int = 3):
    """Predict named uploads: ``[(name, bytes)]`` → (rows, failures).

    ``rows``: one dict per image and rank (file, rank, class, probability);
    ``failures``: (name, reason) for files that are not usable images.
    """
    from core.predict import predict_files

    preds, failures = predict_files(model, class_names, [data for _, data in files], top=top,
                                    names=[name for name, _ in files])
    rows = [{"file": p.path, "rank": rank, "class": c, "probability": prob}
            for p in preds for rank, (c, prob) in enumerate(p.top, start=1)]
    return rows, failures


# -- run folders: what ``python -m core evaluate`` / ``export`` and the page call ----------------------

@dataclass
class RunFolder:
    """A run folder as written by ``python -m core train`` or the app, opened."""

    path: Path
    model: object
    class_names: list[str]
    config: object | None  # ExperimentConfig, when config.json is there and valid
    info: dict  # run.json (empty when missing)


def open_run(run_dir: str | Path) -> RunFolder:
    """Load ``model.keras`` (Keras safe mode), the class names, config.json and run.json."""
    from core.config import ConfigError, ExperimentConfig
    from core.export import ModelFileError, load_model

    run_dir = Path(run_dir)
    if not (run_dir / "model.keras").is_file():
        what = "does not exist" if not run_dir.exists() else ("a file" if run_dir.is_file() else "no model.keras in it")
        raise ModelFileError(f"run: Expected a run folder with model.keras (as written by python -m core train). "
                             f"Received: {run_dir} ({what})")
    model, names = load_model(run_dir / "model.keras")
    info = {}
    if (run_dir / "run.json").is_file():
        try:
            info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        except ValueError:
            info = {}
    config = None
    if (run_dir / "config.json").is_file():
        try:
            config = ExperimentConfig.load(run_dir / "config.json")
        except ConfigError:
            config = None
    return RunFolder(run_dir, model, names, config, info)


def run_dataset(run: RunFolder):
    """``(split, ImageDataset)``: the run's own test files (else validation files) from run.json."""
    from core.data import DataError, ImageDataset

    info = run.info
    split = "test" if info.get("test_files") else "validation"
    files = info.get(f"{split}_files") or []
    if not files:
        raise DataError(f"data: Expected run.json to list the run's validation files. Received: none in {run.path}; "
                        "pass --data PATH to score a folder of class folders")
    root = Path(info.get("data_root") or ".")
    paths = [str(Path(f) if Path(f).is_absolute() else root / f) for f in files]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"data: Expected the run's {split} files under {root} (listed in run.json). Received: "
                        f"{len(missing)} of {len(paths)} missing (e.g. {missing[0]}); pass --data PATH to score "
                        "another folder")
    known = set(run.class_names)
    labels = []
    for f in files:
        cls = next((part for part in Path(f).parts if part in known), None)
        if cls is None:
            raise DataError(f"data: Expected each listed file inside a class folder ({', '.join(run.class_names)}). "
                            f"Received: {f}")
        labels.append(run.class_names.index(cls))
    return split, ImageDataset(paths, np.array(labels, np.int32), list(run.class_names))


def folder_dataset(path: str | Path):
    """``(label, ImageDataset)`` of a labelled folder or zip to score: its test split when it
    has ``test/``, its validation split when it has ``train/`` + ``validation/``, else every image."""
    from core.data import ImageDataset, load_dataset

    data = load_dataset(path, val_split=0.5, seed=0)
    if data.layout == "splits":
        split, ds = evaluation_split(data)
        return f"{split} split of {Path(path).name}", ds
    parts = [data.train, data.validation] + ([data.test] if data.test is not None else [])
    paths = [p for ds in parts for p in ds.paths]
    labels = np.concatenate([np.asarray(ds.labels, np.int32) for ds in parts])
    order = np.argsort(paths, kind="stable")
    return f"every image in {Path(path).name}", ImageDataset([paths[i] for i in order], labels[order], data.class_names)


def evaluate_run(run_dir: str | Path, data: str | Path | None = None) -> tuple[Evaluation, Path]:
    """Score a run folder's model on its own test/validation files (or the folder ``data``);
    write ``evaluation.json`` into the run folder. Returns ``(evaluation, json path)``."""
    run = open_run(run_dir)
    split, ds = folder_dataset(data) if data is not None else run_dataset(run)
    ev = evaluate_model(run.model, ds, run.class_names, split)
    out = run.path / EVALUATION_FILE
    report = ev.to_dict()
    report["data"] = str(data) if data is not None else run.info.get("data_root")
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ev, out


@dataclass
class ExportedFile:
    name: str
    path: Path
    note: str = ""  # what it is, its size, a parity check
    parity: dict | None = None  # tflite: core.tflite.compare's {"images", "max_abs_diff", "top_agree"}

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def parse_formats(text: str) -> list[str]:
    from core.config import ConfigError

    wanted = [f.strip().lower() for f in str(text).split(",") if f.strip()]
    bad = [f for f in wanted if f not in FORMATS]
    if not wanted or bad:
        raise ConfigError(f"format: Expected a comma-separated list of {', '.join(FORMATS)}. "
                          f"Received: {text!r}")
    return list(dict.fromkeys(wanted))


def export_model(model, class_names: list[str], out_dir: str | Path, formats=FORMATS, config=None,
                 quantize: bool = False, check_images: np.ndarray | None = None, run_id: str = "") -> list[ExportedFile]:
    """Write the chosen formats into ``out_dir`` and say what was written.

    ``keras``: model.keras (class names inside) + labels.json, + config.json when
    there is a config; ``tflite``: model.tflite (and model_quant.tflite with
    ``quantize``), each run through LiteRT on ``check_images`` and compared with
    Keras; ``script``: train.py (needs the config).
    """
    from core.export import LABELS_ENTRY, read_class_names, save_model

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[ExportedFile] = []
    if "keras" in formats:
        target = out_dir / "model.keras"
        if not (target.is_file() and read_class_names(target) == list(class_names)
                and _zip_has(target, LABELS_ENTRY)):
            save_model(model, target, class_names)
        done.append(ExportedFile("model.keras", target, "raw RGB 0–255 in, preprocessing and class names inside"))
        labels = out_dir / "labels.json"
        labels.write_text(json.dumps({"class_names": list(class_names)}, indent=2, ensure_ascii=False) + "\n",
                          encoding="utf-8")
        done.append(ExportedFile("labels.json", labels, "class names in output order"))
        if config is not None:
            cfg = out_dir / "config.json"
            if not cfg.is_file():
                config.save(cfg)
            done.append(ExportedFile("config.json", cfg, "the experiment; python -m core train --config accepts it"))
        if (out_dir / "run.json").is_file():  # written by training: dataset fingerprint, split files, scores
            done.append(ExportedFile("run.json", out_dir / "run.json",
                                     "the run: dataset fingerprint, train/validation/test files, best epoch"))
    if "tflite" in formats:
        from core import tflite

        for quant in ([False, True] if quantize else [False]):
            name = tflite.QUANT_NAME if quant else tflite.FLOAT_NAME
            path = tflite.convert(model, out_dir / name, quantize=quant)
            note = "dynamic-range quantised (8-bit weights)" if quant else "float32"
            c = None
            if check_images is not None and len(check_images):
                c = tflite.compare(model, path, check_images)
                note += (f"; LiteRT vs Keras on {c['images']} images: max |Δp| {c['max_abs_diff']:.2g}, "
                         f"same top class {c['top_agree']:.0%}")
            done.append(ExportedFile(name, path, note, c))
    if "script" in formats:
        if config is None:
            from core.config import ConfigError

            raise ConfigError("script: Expected the run's config.json to write train.py. Received: no config "
                              "(a model file alone does not say how it was built)")
        from core.scriptgen import SCRIPT_NAME, write_train_script

        path = write_train_script(config, class_names, out_dir / SCRIPT_NAME, run_id)
        done.append(ExportedFile(SCRIPT_NAME, path, "standalone plain-Keras training script"))
    return done


def _zip_has(path: Path, entry: str) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return entry in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def export_run(run_dir: str | Path, formats=FORMATS, quantize: bool = False, check: int = 32) -> list[ExportedFile]:
    """Export a run folder into itself; TFLite is checked on up to ``check`` of the run's own images."""
    from core.data import DataError, load_arrays
    from core.predict import model_image_size

    run = open_run(run_dir)
    images = None
    if "tflite" in formats and check:
        try:
            _, ds = run_dataset(run)
            images = load_arrays(ds.paths[:check], model_image_size(run.model))
        except DataError:
            images = sample_inputs(model_image_size(run.model), 8)
    return export_model(run.model, run.class_names, run.path, formats, run.config, quantize, images,
                        run.info.get("run_id", ""))


def sample_inputs(size: int, n: int = 8, seed: int = 0) -> np.ndarray:
    """Deterministic noise images (raw 0–255) for a parity check when no real images are at hand."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def export_zip(files: list[ExportedFile]) -> bytes:
    """One zip of the exported files (flat, by name)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f.path, f.name)
    return buf.getvalue()


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 2**20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.2f} MiB"
