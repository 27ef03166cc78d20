"""Saving and reloading runs and models.

``model.keras`` is a whole model taking raw RGB 0–255 images with the base's
preprocessing inside as a real layer, so any Keras loads it in safe mode. The
class names travel inside the file: a ``labels.json`` entry is added to the
``.keras`` zip (Keras ignores entries it does not know), and beside it in the
run folder. Read them back with :func:`load_model` or
``json.loads(zipfile.ZipFile("model.keras").read("labels.json"))``.
"""
from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

LABELS_ENTRY = "labels.json"


class ModelFileError(Exception):
    """A model file cannot be loaded; the message says why."""


def save_model(model, path: str | Path, class_names: list[str]) -> Path:
    path = Path(path)
    model.save(path)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(LABELS_ENTRY, json.dumps({"class_names": list(class_names)}, ensure_ascii=False))
    return path


def read_class_names(path: str | Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            if LABELS_ENTRY in zf.namelist():
                return list(json.loads(zf.read(LABELS_ENTRY))["class_names"])
    except (zipfile.BadZipFile, OSError, KeyError, ValueError):
        return None
    labels = Path(path).with_name("labels.json")
    if labels.exists():
        return list(json.loads(labels.read_text(encoding="utf-8"))["class_names"])
    return None


def load_model(path: str | Path):
    """Load a ``.keras`` file in Keras safe mode; return ``(model, class_names)``."""
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise ModelFileError(f"model: Expected a .keras file. Received: {path} ({what})")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"model: Expected a .keras file (a zip written by Keras 3). Received: {path.name}, not a zip")
    import keras

    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except ValueError as e:
        if "safe_mode" in str(e) or "lambda" in str(e).lower():
            raise ModelFileError(f"model: {path.name} carries Python code (a Lambda layer); "
                                 "refused in safe mode, never executed") from None
        raise ModelFileError(f"model: cannot load {path.name}: {str(e).splitlines()[0][:300]}") from None
    except Exception as e:
        raise ModelFileError(f"model: cannot load {path.name}: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}") from None
    shape = model.input_shape[0] if isinstance(model.input_shape, list) else model.input_shape
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] != 3:
        raise ModelFileError(f"model: Expected a model taking images of a fixed size, shape (None, H, W, 3). "
                             f"Received: {path.name} with input shape {tuple(shape)}")
    names = read_class_names(path)
    n_out = int(model.output_shape[-1])
    if names is None or len(names) != n_out:
        names = [f"class_{i}" for i in range(n_out)]
    return model, names


def save_run(result, run_dir: str | Path) -> Path:
    """Write a run folder: model.keras, labels.json, config.json, history.csv, run.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = {"class_names": result.class_names}
    (run_dir / "labels.json").write_text(json.dumps(labels, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    result.config.save(run_dir / "config.json")
    write_history(result.history, run_dir / "history.csv")
    if result.model is not None:
        save_model(result.model, run_dir / "model.keras", result.class_names)
    data = result.data
    info = {
        "run_id": result.run_id,
        "class_names": result.class_names,
        "config": result.config.to_dict(),
        "weights": result.config.weights_label(),
        "best_val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "epochs_finished": len(result.history),
        "status": result.status,
        "path": result.path,
        "params": result.params,
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "model_file": "model.keras" if result.model is not None else None,
        "monitor": getattr(result, "monitor", None),
        "best_value": getattr(result, "best_value", None),
        "phases": getattr(result, "phases", []),
    }
    if data is not None:
        info.update({
            "data_root": data.root,
            "data_fingerprint": data.fingerprint(),
            "train_files": _relative(data.train.paths, data.root),
            "validation_files": _relative(data.validation.paths, data.root),
            "test_files": _relative(data.test.paths, data.root) if data.test is not None else None,
            "train_labels": [int(y) for y in data.train.labels],
            "validation_labels": [int(y) for y in data.validation.labels],
            "skipped": [{"path": s.path, "reason": s.reason} for s in data.skipped],
        })
    (run_dir / "run.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return run_dir


def write_history(history: list[dict], path: Path) -> None:
    from core.train import HISTORY_COLUMNS

    extra = [k for k in (history[0] if history else {}) if k not in HISTORY_COLUMNS]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS + extra)
        w.writeheader()
        for row in history:
            w.writerow(row)


def _relative(paths: list[str], root: str) -> list[str]:
    out = []
    for p in paths:
        try:
            out.append(str(Path(p).relative_to(root)))
        except ValueError:
            out.append(p)
    return out
