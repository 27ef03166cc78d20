"""What the pages show of a dataset: counts, thumbnails, skipped files, augmented
samples, and where uploads are kept. Decoding goes through ``core.images``.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from core.data import cache_dir
from core.images import ImageDecodeError, decode_image


def counts_frame(data):
    """Long frame (class, split, images) of a :class:`~core.data.DataSplits`."""
    import pandas as pd

    rows = []
    for split, ds in (("train", data.train), ("validation", data.validation), ("test", data.test)):
        if ds is None:
            continue
        for name, n in ds.counts().items():
            rows.append({"class": name, "split": split, "images": n})
    return pd.DataFrame(rows, columns=["class", "split", "images"])


def counts_table(data):
    """Wide frame: one row per class, one column per split, and a total."""
    df = counts_frame(data)
    wide = df.pivot_table(index="class", columns="split", values="images", aggfunc="sum", sort=False).fillna(0).astype(int)
    wide = wide[[c for c in ("train", "validation", "test") if c in wide.columns]]
    wide["total"] = wide.sum(axis=1)
    return wide.reset_index()


def skipped_frame(data):
    import pandas as pd

    root = Path(data.root)
    rows = []
    for s in data.skipped:
        try:
            shown = str(Path(s.path).relative_to(root))
        except ValueError:
            shown = data.display(s.path)
        rows.append({"file": shown, "reason": s.reason})
    return pd.DataFrame(rows, columns=["file", "reason"])


def thumbnails(data, per_class: int = 6, size: int = 96, split: str = "train") -> dict[str, list[np.ndarray]]:
    """Up to ``per_class`` decoded thumbnails per class, in file order."""
    ds = getattr(data, split)
    out: dict[str, list[np.ndarray]] = {name: [] for name in data.class_names}
    for path, label in zip(ds.paths, ds.labels):
        name = data.class_names[int(label)]
        if len(out[name]) >= per_class:
            continue
        try:
            out[name].append(decode_image(path, size))
        except ImageDecodeError:
            continue
    return out


def thumbnail_paths(data, per_class: int = 8, split: str = "train") -> dict[str, list[str]]:
    """Up to ``per_class`` files per class, spread over the class (not just its first files)."""
    ds = getattr(data, split)
    by_class: dict[str, list[str]] = {name: [] for name in data.class_names}
    for path, label in zip(ds.paths, ds.labels):
        by_class[data.class_names[int(label)]].append(path)
    out = {}
    for name, paths in by_class.items():
        if len(paths) <= per_class:
            out[name] = paths
        else:
            idx = np.linspace(0, len(paths) - 1, per_class).round().astype(int)
            out[name] = [paths[i] for i in idx]
    return out


def thumbnail_items(data, per_class: int = 8, size: int = 96) -> dict[str, list[tuple[str, np.ndarray]]]:
    """(path, thumbnail) pairs per class, spread over the class; files that no longer decode are left out."""
    out = {}
    for name, paths in thumbnail_paths(data, per_class).items():
        out[name] = []
        for p in paths:
            try:
                out[name].append((p, decode_image(p, size)))
            except ImageDecodeError:
                continue
    return out


def preview_image(path: str, max_side: int = 768) -> np.ndarray:
    """One image, uncropped, at most ``max_side`` pixels on its long side (for an enlarged view)."""
    from PIL import Image

    arr = decode_image(path)
    h, w = arr.shape[:2]
    if max(h, w) <= max_side:
        return arr
    img = Image.fromarray(arr)
    img.thumbnail((max_side, max_side), Image.BILINEAR)
    return np.asarray(img)


def report_frame(data):
    """The report table: one row per class (images per split, skipped, median size, formats)."""
    import pandas as pd

    return pd.DataFrame(data.report_rows())


def augmented_samples(paths: list[str], size: int, kind: str = "default", copies: int = 4, seed: int = 0) -> list[list[np.ndarray]]:
    """For each path: the original followed by ``copies`` augmented versions (uint8)."""
    from core.augment import augmentation_model
    from core.data import load_arrays

    x = load_arrays(list(paths), size)
    rows = [[img] for img in x]
    aug = augmentation_model(kind, seed)
    if aug is None or not len(x):
        return rows
    batch = x.astype(np.float32)
    for _ in range(copies):
        out = np.asarray(aug(batch, training=True))
        for row, img in zip(rows, out):
            row.append(np.clip(img, 0, 255).astype(np.uint8))
    return rows


def preview_paths(data, per_class: int = 1) -> list[str]:
    """A few training files, one (or more) per class, for previews."""
    picked, seen = [], {}
    for path, label in zip(data.train.paths, data.train.labels):
        if seen.get(int(label), 0) < per_class:
            picked.append(path)
            seen[int(label)] = seen.get(int(label), 0) + 1
    return picked


def save_upload(name: str, content: bytes, kind: str, workspace=None) -> Path:
    """Keep an uploaded file in the person's workspace (or the cache), in a folder named by its content.

    The original file name is kept (sanitised): Keras reads weights files by
    their suffix, and messages name the file as the person knows it.
    """
    digest = hashlib.sha256(content).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).strip("._") or "upload"
    parent = workspace.folder("uploads", kind) if workspace is not None else cache_dir() / "uploads" / kind
    folder = parent / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / safe
    if not path.exists() or path.stat().st_size != len(content):
        tmp = folder / (safe + ".part")
        tmp.write_bytes(content)
        tmp.replace(path)
    return path
