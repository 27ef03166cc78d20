"""Datasets: find the classes in a folder or zip, decode every file once, split.

``load_dataset(path)`` returns :class:`DataSplits`: train / validation (/ test)
:class:`ImageDataset` objects holding file paths and integer labels, the sorted
class names, and every file that was skipped with the reason. Every image is
decoded once here, so training never meets a file it cannot decode.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from zlib import error as zlib_error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.images import ImageDecodeError, decode_image, image_info

JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"}
JUNK_DIRS = {"__macosx", ".ipynb_checkpoints", "__pycache__", ".git", ".svn", ".trash", "$recycle.bin"}
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "validation": "validation", "val": "validation", "valid": "validation",
    "test": "test", "testing": "test",
}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".jfif", ".ppm", ".pgm"}
ARCHIVE_EXTS = {".zip", ".tar", ".gz", ".tgz", ".rar", ".7z", ".bz2", ".xz"}
MAX_ZIP_FILES = 100_000
MAX_ZIP_BYTES = 8 * 2**30
# Decode size used to check files up front (JPEG draft makes this cheap).
CHECK_SIZE = 64
WORKERS = max(2, min(8, os.cpu_count() or 2))


class DataError(Exception):
    """The data cannot be used; the message says what was expected and what was found."""


@dataclass
class Skipped:
    path: str
    reason: str
    label: str = ""  # the class the file was in, when it was in one


@dataclass
class ImageDataset:
    paths: list[str]
    labels: np.ndarray  # int32, index into class_names
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.labels, minlength=len(self.class_names)) if len(self.labels) else np.zeros(len(self.class_names), int)
        return {name: int(n) for name, n in zip(self.class_names, c)}


@dataclass
class DataSplits:
    root: str
    class_names: list[str]
    train: ImageDataset
    validation: ImageDataset
    test: ImageDataset | None = None
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layout: str = "classes"  # "classes" (split made here) or "splits" (train/validation folders)
    test_from: str = ""  # where the test split came from: "folder" (a test/ folder), "fraction", or ""
    warnings: list[str] = field(default_factory=list)  # lopsided or tiny data, named with numbers
    source: str = ""  # what the person gave: a folder or a zip
    file_info: dict = field(default_factory=dict)  # path -> (format, width, height)
    origins: dict = field(default_factory=dict)  # unpacked folder -> what the person calls it ("photos.zip")

    def display(self, path: str) -> str:
        """A file as the person knows it: ``photos.zip:cats/1.jpg`` rather than a cache path."""
        best = ""
        for prefix in self.origins:
            if (path == prefix or path.startswith(prefix.rstrip(os.sep) + os.sep)) and len(prefix) > len(best):
                best = prefix
        if best:
            rel, label = Path(path).relative_to(best).as_posix(), self.origins[best]
            if rel == ".":
                return label
            return f"{label}/{rel}" if ":" in label else f"{label}:{rel}"  # "a.zip:cats" + "/1.jpg"
        return path

    def skipped_csv(self) -> str:
        """The skipped files and their reasons as CSV text (``file,reason``), as ``scan --report`` writes."""
        import csv
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "reason"])
        w.writerows([self.display(s.path), s.reason] for s in self.skipped)
        return buf.getvalue()

    def class_weights(self) -> dict[int, float]:
        """Balanced weights from the training counts: n / (classes * count)."""
        counts = np.bincount(self.train.labels, minlength=len(self.class_names)).astype(float)
        n, k = counts.sum(), len(self.class_names)
        return {i: float(n / (k * c)) if c else 0.0 for i, c in enumerate(counts)}

    def report_rows(self) -> list[dict]:
        """One row per class: images per split, skipped files, median size, formats."""
        import collections

        rows = []
        for idx, name in enumerate(self.class_names):
            paths = [p for ds in (self.train, self.validation, self.test) if ds is not None
                     for p, y in zip(ds.paths, ds.labels) if y == idx]
            infos = [self.file_info.get(p) for p in paths if self.file_info.get(p)]
            sizes = sorted((w * h, w, h) for _, w, h in infos)
            med = sizes[len(sizes) // 2] if sizes else None
            formats = collections.Counter(f for f, _, _ in infos)
            skipped = sum(1 for s in self.skipped if s.label == name)
            row = {"class": name, "images": len(paths), "train": int(np.sum(self.train.labels == idx)),
                   "validation": int(np.sum(self.validation.labels == idx))}
            if self.test is not None:
                row["test"] = int(np.sum(self.test.labels == idx))
            row.update({"skipped": skipped, "median_size": f"{med[1]}x{med[2]}" if med else "",
                        "formats": ", ".join(f"{f} {n}" for f, n in formats.most_common())})
            rows.append(row)
        return rows

    def fingerprint(self) -> str:
        """Stable id of the exact files, labels and split (for caches and configs)."""
        h = hashlib.sha256()
        for name, ds in (("train", self.train), ("validation", self.validation), ("test", self.test)):
            if ds is None:
                continue
            for p, y in zip(ds.paths, ds.labels):
                st = os.stat(p)
                h.update(f"{name}|{p}|{int(y)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def summary(self) -> str:
        parts = [f"{len(self.class_names)} classes", f"{len(self.train)} train", f"{len(self.validation)} validation"]
        if self.test is not None:
            parts.append(f"{len(self.test)} test")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        return ", ".join(parts)


# -- finding files ---------------------------------------------------------------

def is_junk(name: str) -> bool:
    low = name.lower()
    return low in JUNK_FILES or low in JUNK_DIRS or name.startswith(".") or name.startswith("~$")


def _visible_children(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not is_junk(p.name))
    except OSError as e:
        raise DataError(f"cannot read folder {folder}: {e.strerror}") from None


def files_under(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not is_junk(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not is_junk(f))
    return out


def _unwrap(root: Path) -> Path:
    """Descend through single wrapper folders (``photos.zip`` → ``photos/``)."""
    for _ in range(20):
        kids = _visible_children(root)
        dirs = [k for k in kids if k.is_dir()]
        images = [k for k in kids if k.is_file() and k.suffix.lower() in IMAGE_EXTS]
        inner_dirs = [k for k in _visible_children(dirs[0]) if k.is_dir()] if len(dirs) == 1 else []
        # A single folder holding folders is a wrapper (a README beside it does not matter);
        # one holding only images is a (lone) class.
        if len(dirs) == 1 and not images and inner_dirs and dirs[0].name.lower() not in SPLIT_NAMES:
            root = dirs[0]
        else:
            break
    return root


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    return {d.name: files_under(d) for d in _visible_children(folder) if d.is_dir()}


def extract_zip(zip_path: str | Path, dest_root: str | Path | None = None, progress=None) -> Path:
    """Extract a zip once into a cache folder keyed by its content; return the folder.

    ``progress(members done, members)`` is called while it unpacks.
    """
    zip_path = Path(zip_path)
    h = hashlib.sha256()
    with open(zip_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    dest_root = Path(dest_root) if dest_root else cache_dir() / "zips"
    dest = dest_root / h.hexdigest()[:16]
    if (dest / ".complete").exists():
        return dest
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{zip_path.name}: Expected a zip archive. Received: a file that is not a valid zip ({e})") from None
    with zf:
        infos = zf.infolist()
        declared = sum(i.file_size for i in infos)
        if len(infos) > MAX_ZIP_FILES or declared > MAX_ZIP_BYTES:
            raise DataError(
                f"{zip_path.name}: Expected at most {MAX_ZIP_FILES:,} files and {MAX_ZIP_BYTES / 2**30:.0f} GiB "
                f"unpacked. Received: {len(infos):,} files, {declared / 2**30:.1f} GiB unpacked (a zip bomb?)")
        dest_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest_root))
        written = 0
        try:
            for i, info in enumerate(infos, 1):
                written += _extract_member(zf, info, tmp, zip_path, written)
                if progress and (i % 64 == 0 or i == len(infos)):
                    progress(i, len(infos))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    (tmp / ".complete").write_text("ok")
    if dest.exists():
        shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _member_parts(info: zipfile.ZipInfo) -> list[str]:
    name = info.filename
    if info.flag_bits & 0x800 == 0:
        # Not marked UTF-8: zips from Windows/macOS tools often still are.
        try:
            name = name.encode("cp437").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _note(tmp: Path, kind: str, member: str, reason: str) -> None:
    member = "".join(c if c.isprintable() else "?" for c in member)  # one line per member, whatever its name
    with open(tmp / f".{kind}", "a", encoding="utf-8", errors="replace") as f:
        f.write(f"{member}\t{reason}\n")


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, tmp: Path, zip_path: Path, written: int) -> int:
    """Extract one member safely; return the bytes written. Problems become notes, not crashes."""
    parts = _member_parts(info)
    raw = info.filename.replace("\\", "/")
    if ".." in parts or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        # A path that would land outside the folder (../, /etc/…, C:\…): never unpacked, and not
        # moved inside either, where it would make a class of its own.
        _note(tmp, "ignored", raw, "path outside the zip's folder, not unpacked")
        return 0
    if not parts or any(is_junk(p) for p in parts):
        return 0  # OS junk
    member = "/".join(parts)
    is_dir = info.is_dir() or info.filename.endswith("\\")  # Windows tools write folders as "name\\"
    if any(len(p.encode()) > 255 for p in parts):
        _note(tmp, "damaged", member, "name too long for this file system")
        return 0
    target = tmp.joinpath(*parts)
    try:
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
            return 0
        if Path(parts[-1]).suffix.lower() in ARCHIVE_EXTS:
            _note(tmp, "ignored", member, "nested archive, not opened")
            return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        with zf.open(info) as src, open(target, "wb") as dst:
            # The sizes in a zip's directory can lie: count what really comes out.
            while chunk := src.read(1 << 20):
                n += len(chunk)
                if written + n > MAX_ZIP_BYTES:
                    raise DataError(f"{zip_path.name}: Expected at most {MAX_ZIP_BYTES / 2**30:.0f} GiB "
                                    "unpacked. Received: more (a zip bomb?)")
                dst.write(chunk)
        return n
    except RuntimeError as e:  # encrypted member
        reason = "encrypted (password protected)" if "encrypted" in str(e) else str(e)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, zlib_error) as e:
        reason = f"damaged in the zip ({str(e).splitlines()[0][:120] or type(e).__name__})"
    if target.is_file():
        target.unlink(missing_ok=True)
    _note(tmp, "damaged", member, reason)
    return 0


def cache_dir() -> Path:
    d = Path(os.environ.get("TRANSFER_LAB_CACHE", Path.home() / ".cache" / "transfer_lab"))
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- checking files ----------------------------------------------------------------

EXPECTED_EXTS = {"JPEG": {".jpg", ".jpeg", ".jfif"}, "PNG": {".png"}, "GIF": {".gif"}, "BMP": {".bmp"},
                 "WEBP": {".webp"}, "TIFF": {".tif", ".tiff"}}


class _Checker:
    """Decodes every file once (in threads), keeps what each file is, reports progress."""

    def __init__(self, progress=None):
        self.progress = progress
        self.info: dict[str, tuple[str, int, int]] = {}
        self.misnamed: list[tuple[str, str]] = []  # (path, real format) of files whose extension lies
        self.done = 0
        self.total = 0

    def check(self, paths: list[Path], label: str = "") -> tuple[list[Path], list[Skipped], list[str]]:
        def one(p: Path):
            try:
                decode_image(p, CHECK_SIZE)
            except ImageDecodeError as e:
                return e.reason, None
            return None, image_info(p)

        results = []
        with ThreadPoolExecutor(WORKERS) as pool:
            for r in pool.map(one, paths):
                results.append(r)
                self.done += 1
                if self.progress and (self.done % 16 == 0 or self.done == self.total):
                    self.progress(self.done, self.total)
        ok, skipped, notes = [], [], []
        for p, (reason, info) in zip(paths, results):
            if reason is not None:
                skipped.append(Skipped(str(p), reason, label))
                continue
            ok.append(p)
            self.info[str(p)] = info
            fmt = info[0]
            expected = EXPECTED_EXTS.get(fmt or "", set())
            if expected and p.suffix.lower() not in expected:
                self.misnamed.append((str(p), fmt))  # becomes a note once the file can be named as the person knows it
        return ok, skipped, notes


def check_files(paths: list[Path]) -> tuple[list[Path], list[Skipped], list[str]]:
    """Decode every file once; return (usable, skipped with reasons, notes)."""
    return _Checker().check(paths)


# -- the public entry ------------------------------------------------------------------

IMBALANCE_WARN = 5.0  # warn when the largest class has this many times the images of the smallest


def load_dataset(path: str | Path, val_split: float = 0.2, seed: int = 0, test_split: float = 0.0,
                 progress=None, unpack_dir: str | Path | None = None, name: str | None = None,
                 unpack_progress=None) -> DataSplits:
    """Find classes in a folder or zip, check every file, and split.

    Layouts: class folders at the root (``cats/…``, ``dogs/…``); one wrapper
    folder around them; or ``train/`` + ``validation/`` (any case; ``val``,
    ``valid``) with an optional ``test/``, each holding class folders. Files in
    nested subfolders of a class count for that class. Without split folders the
    split is stratified and seeded; ``test_split`` sets a fraction aside as a
    held-out test split. ``progress(done, total)`` is called while files are checked.
    A zip is unpacked (once) under ``unpack_dir`` (default: the shared cache; the
    app gives the person's workspace). ``name`` is what the person calls a zip
    (an upload is stored under a cleaned-up name); messages and reports use it.
    ``unpack_progress(members done, members)`` is called while a zip is unpacked.
    """
    src = Path(path)
    if not src.exists():
        raise DataError(f"data: Expected a folder or a .zip file. Received: {path} (does not exist)")
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise DataError(f"data: Expected a folder or a .zip file. Received: {src.name} (not a zip archive)")
        shown = name or src.name
        try:
            root = extract_zip(src, unpack_dir, unpack_progress)
        except DataError as e:
            raise DataError(str(e).replace(src.name, shown)) from None
        origins = {str(root): shown}
    else:
        root, origins, shown = src, {}, ""
    notes, zip_skipped, more_origins = _unpack_records(root, shown)
    origins.update(more_origins)
    top = root
    root = _unwrap(root)
    checker = _Checker(progress)
    try:
        splits = _split_folders(root)
        if "train" in splits:
            out = _load_split_layout(root, splits, notes, checker, test_split, seed)
        elif "validation" in splits or "test" in splits:
            raise DataError(f"data: found {', '.join(sorted(splits))} but no train/ folder; "
                            "Expected train/ + validation/ folders, or class folders at the top")
        else:
            out = _load_class_layout(root, val_split, test_split, seed, notes, checker)
    except DataError as e:
        if src.is_file():  # name the user's zip, not the cache folder it was unpacked into
            raise DataError(str(e).replace(str(top), shown).replace(top.name, shown)) from None
        raise
    for s in zip_skipped:
        s.label = s.label or _class_of(s.path, root, out)
    out.skipped = zip_skipped + out.skipped
    out.source = str(src)
    out.origins = origins
    for p, fmt in checker.misnamed:
        suffix = Path(p).suffix or "(no extension)"
        out.notes.append(f"{out.display(p)}: content is {fmt} although named {suffix}; used as {fmt}")
    out.file_info = checker.info
    out.warnings = _balance_warnings(out)
    return out


def _unpack_records(top: Path, zip_name: str) -> tuple[list[str], list[Skipped], dict]:
    """What unpacking left beside the files (ours only: a folder with ``.complete``).

    ``.damaged``: members that could not be unpacked; ``.ignored``: members left out
    on purpose (notes); ``.skipped``: already-named skipped files (merged zips);
    ``.origins.json``: which folder came from which zip.
    """
    notes: list[str] = []
    skipped: list[Skipped] = []
    origins: dict = {}
    if not (top / ".complete").exists():
        return notes, skipped, origins
    for kind in ("damaged", "ignored", "skipped"):
        f = top / f".{kind}"
        for line in (f.read_text(encoding="utf-8").splitlines() if f.exists() else []):
            member, _, reason = line.partition("\t")
            if kind == "damaged":
                skipped.append(Skipped(str(top / member), reason))
            elif kind == "skipped":
                skipped.append(Skipped(member, reason))
            else:
                notes.append(f"{zip_name + ':' if zip_name else ''}{member}: {reason}")
    f = top / ".origins.json"
    if f.exists():
        import json

        origins = {str(top / k): v for k, v in json.loads(f.read_text(encoding="utf-8")).items()}
    return notes, skipped, origins


def _class_of(path: str, root: Path, data: "DataSplits") -> str:
    """The class a (skipped) file sat in, from its folder, or ""."""
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return ""
    if data.layout == "splits":
        parts = parts[1:]
    by_lower = {c.lower(): c for c in data.class_names}
    return by_lower.get(parts[0].lower(), "") if len(parts) > 1 else ""


def _split_folders(root: Path) -> dict[str, Path]:
    """train/validation/test folders (any case; val, valid…) that hold class folders.

    A ``train/`` holding only images is a class called train, not a split.
    """
    found: dict[str, list[Path]] = {}
    for k in _visible_children(root):
        if k.is_dir() and k.name.lower() in SPLIT_NAMES and any(c.is_dir() for c in _visible_children(k)):
            found.setdefault(SPLIT_NAMES[k.name.lower()], []).append(k)
    for split, folders in found.items():
        if len(folders) > 1:
            raise DataError(f"data: Expected one {split} folder. Received: {', '.join(f.name + '/' for f in folders)}; "
                            "merge them or remove one")
    return {split: folders[0] for split, folders in found.items()}


def _load_class_layout(root: Path, val_split: float, test_split: float, seed: int, notes: list[str],
                       checker: "_Checker") -> DataSplits:
    classes = _class_folders(root)
    _check_classes(classes, root)
    class_names = sorted(classes)
    all_skipped = [Skipped(str(f), "not inside a class folder") for f in _visible_children(root) if f.is_file()]
    checker.total = sum(len(v) for v in classes.values())
    rng = np.random.default_rng(seed)
    parts = {"train": ([], []), "validation": ([], []), "test": ([], [])}
    for idx, name in enumerate(class_names):
        ok, skipped, n = checker.check(classes[name], name)
        all_skipped += skipped
        notes += n
        ok = [str(p) for p in ok]
        order = rng.permutation(len(ok))
        n_test, n_val = _split_sizes(len(ok), val_split, test_split)
        for rank, i in enumerate(order):
            part = "test" if rank < n_test else ("validation" if rank < n_test + n_val else "train")
            parts[part][0].append(ok[i])
            parts[part][1].append(idx)
    _check_usable(class_names, parts["train"][1], "train", root, all_skipped)
    if not parts["validation"][0]:
        raise DataError("data: Expected at least 2 usable images in some class to make a validation split. "
                        f"Received: {len(parts['train'][0])} usable image(s)")
    ds = {k: ImageDataset(*_sorted_pairs(v), class_names) for k, v in parts.items()}
    return DataSplits(
        root=str(root), class_names=class_names, train=ds["train"], validation=ds["validation"],
        test=ds["test"] if test_split > 0 else None, skipped=all_skipped, notes=notes, layout="classes",
        test_from="fraction" if test_split > 0 else "",
    )


def _split_sizes(n: int, val_split: float, test_split: float) -> tuple[int, int]:
    """(test, validation) counts for a class of n images; train keeps at least one."""
    if n < 2:
        return 0, 0
    n_test = min(max(int(round(n * test_split)), 1), n - 2) if test_split > 0 and n >= 3 else 0
    n_val = min(max(int(round(n * val_split)), 1), n - n_test - 1)
    return n_test, n_val


def _sorted_pairs(pair):
    paths, labels = pair
    order = sorted(range(len(paths)), key=lambda i: (labels[i], paths[i]))
    return [paths[i] for i in order], np.asarray([labels[i] for i in order], np.int32)


def _load_split_layout(root: Path, splits: dict[str, Path], notes: list[str], checker: "_Checker",
                       test_split: float = 0.0, seed: int = 0) -> DataSplits:
    per_split = {name: _class_folders(folder) for name, folder in splits.items()}
    _check_classes(per_split["train"], splits["train"])
    class_names = sorted(per_split["train"])
    by_lower = {c.lower(): c for c in class_names}
    for split, classes in per_split.items():  # validation/Red is train/red's class
        if split != "train":
            per_split[split] = {by_lower.get(c.lower(), c): files for c, files in classes.items()}
    if "validation" not in per_split:
        raise DataError(f"data: found train/ but no validation/ folder in {root.name}; "
                        "Expected train/ + validation/ (or val/, valid/), or class folders at the top")
    checker.total = sum(len(files) for classes in per_split.values() for files in classes.values())
    all_skipped: list[Skipped] = []
    datasets: dict[str, ImageDataset] = {}
    for split, classes in per_split.items():
        for name in sorted(set(classes) - set(class_names)):
            for f in classes[name]:
                all_skipped.append(Skipped(str(f), f"class '{name}' is not in train/"))
        paths, labels = [], []
        for idx, name in enumerate(class_names):
            ok, skipped, n = checker.check(classes.get(name, []), name)
            all_skipped += skipped
            notes += n
            paths += [str(p) for p in ok]
            labels += [idx] * len(ok)
        for f in (k for k in _visible_children(splits[split]) if k.is_file()):
            all_skipped.append(Skipped(str(f), "not inside a class folder"))
        datasets[split] = ImageDataset(paths, np.asarray(labels, np.int32), class_names)
    _check_usable(class_names, datasets["train"].labels.tolist(), "train", splits["train"], all_skipped)
    if not len(datasets["validation"]):
        found = ", ".join(sorted(per_split["validation"])) or "no class folders"
        raise DataError(f"data: Expected usable images of the train/ classes ({', '.join(class_names)}) in "
                        f"{splits['validation'].name}/. Received: {found}")
    test_from = "folder" if "test" in datasets else ""
    if "test" not in datasets and test_split > 0:  # no test/ folder: set a fraction of train/ aside
        datasets["train"], datasets["test"] = _carve(datasets["train"], test_split, seed)
        test_from = "fraction"
    return DataSplits(
        root=str(root), class_names=class_names,
        train=datasets["train"], validation=datasets["validation"], test=datasets.get("test"),
        skipped=all_skipped, notes=notes, layout="splits", test_from=test_from,
    )


def _carve(ds: ImageDataset, fraction: float, seed: int) -> tuple[ImageDataset, ImageDataset]:
    """Split ``fraction`` of each class off ``ds`` (seeded; every class keeps at least one image)."""
    rng = np.random.default_rng(seed)
    keep, take = ([], []), ([], [])
    for idx in range(len(ds.class_names)):
        members = [p for p, y in zip(ds.paths, ds.labels) if y == idx]
        order = rng.permutation(len(members))
        n = min(max(int(round(len(members) * fraction)), 1), len(members) - 1) if len(members) >= 2 else 0
        for rank, i in enumerate(order):
            part = take if rank < n else keep
            part[0].append(members[i])
            part[1].append(idx)
    return (ImageDataset(*_sorted_pairs(keep), ds.class_names), ImageDataset(*_sorted_pairs(take), ds.class_names))


def _balance_warnings(d: DataSplits) -> list[str]:
    out = []
    train, val = d.train.counts(), d.validation.counts()
    missing = [c for c, n in val.items() if n == 0]
    if missing:
        out.append(f"no validation images of {', '.join(missing)} "
                   f"({', '.join(f'{c}: {train[c]} train' for c in missing)}); its validation accuracy is unknown")
    few = [c for c, n in train.items() if 0 < n < 5]
    if few:
        out.append(f"very few training images: {', '.join(f'{c}: {train[c]}' for c in few)}")
    lo, hi = min(train, key=train.get), max(train, key=train.get)
    if train[lo] and train[hi] / train[lo] >= IMBALANCE_WARN:
        out.append(f"classes are imbalanced: {hi} has {train[hi]} training images, {lo} has {train[lo]} "
                   f"({train[hi] / train[lo]:.0f}:1); consider class weights (--class-weights)")
    return out


def _check_classes(classes: dict[str, list[Path]], where: Path) -> None:
    if not classes:
        loose = sum(1 for k in _visible_children(where) if k.is_file())
        found = f"{loose} file(s) but no class folders" if loose else "no class folders"
        raise DataError(f"data: Expected one folder per class (e.g. cats/, dogs/) in {where.name or where}. "
                        f"Received: {found}")
    if len(classes) < 2:
        raise DataError(f"data: Expected at least 2 class folders. Received: 1 ({next(iter(classes))})")


def _check_usable(class_names, labels, split, where, skipped) -> None:
    counts = np.bincount(np.asarray(labels, int), minlength=len(class_names)) if labels else np.zeros(len(class_names), int)
    empty = [c for c, n in zip(class_names, counts) if n == 0]
    if len(class_names) - len(empty) < 2:
        extra = f" ({len(skipped)} file(s) skipped, e.g. {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise DataError(f"data: Expected usable images in at least 2 classes of {split}. "
                        f"Received: usable images only in {len(class_names) - len(empty)} class(es){extra}")
    if empty:
        raise DataError(f"data: Expected usable images in every class of {split}. "
                        f"Received: none in {', '.join(empty)}")


# -- more sources: several zips, per-class uploads, folders on the server ----------------------

def _zip_layout(root: Path) -> str:
    """``splits`` (train/ + validation/…), ``classes`` (class folders) or ``images`` (loose images only)."""
    if "train" in _split_folders(root):
        return "splits"
    if any(k.is_dir() for k in _visible_children(root)):
        return "classes"
    return "images"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # same disk: no copy
    except OSError:
        shutil.copy2(src, dst)


def merge_zips(zips: list[str | Path], dest_root: str | Path, unpack_dir: str | Path | None = None,
               names: list[str] | None = None) -> Path:
    """Unpack several zips and merge them into one dataset folder under ``dest_root``; return it.

    Class folders of the same name (any case) become one class; a zip holding only
    images (``cats.zip``) becomes a class named after the zip. Zips with
    ``train/`` + ``validation/`` folders merge split by split. A mix of the two
    layouts is refused, naming each zip's layout. ``names`` are the zips' names as
    the person knows them (uploads are stored under other names).
    """
    import json

    zips = [Path(z) for z in zips]
    names = list(names) if names else [z.name for z in zips]
    if len(zips) < 2:
        raise DataError(f"zips: Expected at least 2 zips to merge. Received: {len(zips)}")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"zips: Expected zips with different names. Received: {', '.join(dup)} more than once")
    unpacked, layouts = [], {}
    for z, name in zip(zips, names):
        if not zipfile.is_zipfile(z):
            raise DataError(f"{name}: Expected a zip archive. Received: a file that is not a valid zip")
        try:
            top = extract_zip(z, unpack_dir)
        except DataError as e:
            raise DataError(str(e).replace(z.name, name)) from None
        root = _unwrap(top)
        layouts[name] = _zip_layout(root)
        unpacked.append((name, top, root))
    kinds = {"splits" if v == "splits" else "classes" for v in layouts.values()}
    if len(kinds) > 1:
        desc = {"splits": "train/ + validation/ folders", "classes": "class folders", "images": "images only"}
        found = "; ".join(f"{n}: {desc[v]}" for n, v in layouts.items())
        raise DataError("zips: Expected the same layout in every zip (all class folders, or all train/ + "
                        f"validation/ folders) to merge them. Received: {found}. Upload them one at a time, "
                        "or repack them the same way")
    key = hashlib.sha256("|".join(f"{n}={t.name}" for n, t, _ in unpacked).encode()).hexdigest()[:16]
    dest = Path(dest_root) / key
    if (dest / ".complete").exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    origins: dict[str, str] = {}
    skipped_lines: list[str] = []
    ignored_lines: list[str] = []
    spelled: dict[str, str] = {}  # class name, lower case -> first spelling seen

    def add_class(split_parts: tuple, cls: str, folder: Path, name: str, rel_label: str) -> None:
        cls = spelled.setdefault(cls.lower(), cls)
        stem = Path(name).stem or "zip"
        target = dest.joinpath(*split_parts, cls, stem)
        origins[str(target.relative_to(dest))] = f"{name}:{rel_label}" if rel_label else name
        for f in files_under(folder) if folder.is_dir() else [folder]:
            _link(f, target / (f.relative_to(folder) if folder.is_dir() else f.name))

    for name, top, root in unpacked:
        notes, skipped, _ = _unpack_records(top, name)
        ignored_lines += notes  # "a.zip:red/inner.zip: nested archive, not opened"
        skipped_lines += [f"{name}:{Path(s.path).relative_to(top).as_posix()}\t{s.reason}" for s in skipped]
        rel_root = root.relative_to(top).as_posix()
        prefix = "" if rel_root == "." else rel_root + "/"
        if layouts[name] == "splits":
            for split, folder in _split_folders(root).items():
                for cls_dir in (d for d in _visible_children(folder) if d.is_dir()):
                    add_class((split,), cls_dir.name, cls_dir, name, f"{prefix}{folder.name}/{cls_dir.name}")
        elif layouts[name] == "images":
            images = [k for k in _visible_children(root) if k.is_file()]
            if images:
                cls = Path(name).stem
                spelled.setdefault(cls.lower(), cls)
                target = dest / spelled[cls.lower()] / (Path(name).stem or "zip")
                origins[str(target.relative_to(dest))] = f"{name}:{prefix.rstrip('/')}" if prefix else name
                for f in images:
                    _link(f, target / f.name)
        else:
            for k in _visible_children(root):
                if k.is_dir():
                    add_class((), k.name, k, name, f"{prefix}{k.name}")
                else:
                    skipped_lines.append(f"{name}:{prefix}{k.name}\tnot inside a class folder")
    (dest / ".skipped").write_text("".join(line + "\n" for line in skipped_lines), encoding="utf-8")
    (dest / ".ignored").write_text("".join("\t".join(n.rsplit(": ", 1)) + "\n" for n in ignored_lines),
                                   encoding="utf-8")
    (dest / ".origins.json").write_text(json.dumps(origins, ensure_ascii=False), encoding="utf-8")
    (dest / ".complete").write_text("ok")
    return dest


def clean_class_name(name: str) -> str:
    """A typed class name made safe as a folder name; :class:`DataError` when nothing usable is left."""
    cleaned = " ".join(str(name).replace("/", " ").replace("\\", " ").split()).strip(". ")
    if not cleaned or is_junk(cleaned) or cleaned.lower() in SPLIT_NAMES or len(cleaned.encode()) > 100:
        raise DataError("class name: Expected a short name such as 'cats' (not empty, not starting with '.', "
                        f"not train/validation/test). Received: {name!r}")
    return cleaned


def add_class_images(root: str | Path, class_name: str, files: list[tuple[str, bytes]]) -> tuple[int, list[Skipped]]:
    """Save uploaded images of one class into ``root/<class>/`` (Teachable Machine style).

    Each file is decoded before it is kept; the ones that are not usable images
    come back as skipped with their reasons. Returns (images kept, skipped).
    Names that repeat get a number, so nothing is overwritten.
    """
    import io

    cls = clean_class_name(class_name)
    root = Path(root)
    existing = {d.name.lower(): d.name for d in root.iterdir() if d.is_dir()} if root.is_dir() else {}
    folder = root / existing.get(cls.lower(), cls)
    folder.mkdir(parents=True, exist_ok=True)
    kept, skipped = 0, []
    for name, content in files:
        base = Path(str(name).replace("\\", "/")).name
        try:
            decode_image(io.BytesIO(content), CHECK_SIZE)
        except ImageDecodeError as e:
            skipped.append(Skipped(base, e.reason, cls))
            continue
        stem, ext = os.path.splitext(base)
        stem = stem.strip(". ")[:100] or "image"
        ext = ext if len(ext) <= 10 else ""
        target, i = folder / f"{stem}{ext}", 1
        while target.exists():
            if target.stat().st_size == len(content) and target.read_bytes() == content:
                break  # the same file uploaded again
            i += 1
            target = folder / f"{stem}_{i}{ext}"
        if not target.exists():
            target.write_bytes(content)
        kept += 1
    return kept, skipped


def class_folder_counts(root: str | Path) -> dict[str, int]:
    """Files per class folder under ``root`` (what per-class uploads have collected so far)."""
    root = Path(root)
    if not root.is_dir():
        return {}
    return {d.name: len(files_under(d)) for d in _visible_children(root) if d.is_dir()}


def remove_class(root: str | Path, class_name: str) -> None:
    folder = Path(root) / class_name
    if folder.parent == Path(root) and folder.is_dir() and not is_junk(class_name):
        shutil.rmtree(folder, ignore_errors=True)


FOLDERS_ENV = "TRANSFER_LAB_FOLDERS"


def server_folders() -> list[Path] | None:
    """Where folder paths on the server may be read from: ``None`` when turned off.

    ``TRANSFER_LAB_FOLDERS`` unset: anywhere (local use). ``0``/``off``/``no``/``false``:
    off (shared deployments). Otherwise: only under these folders (``os.pathsep``-separated).
    """
    value = os.environ.get(FOLDERS_ENV)
    if value is None or not value.strip():
        return [Path("/")]
    if value.strip().lower() in {"0", "off", "no", "false", "none"}:
        return None
    return [Path(v).expanduser().resolve() for v in value.split(os.pathsep) if v.strip()]


def check_server_folder(path: str) -> Path:
    """The folder (or zip) ``path`` when reading it is allowed and it exists; else :class:`DataError` saying why."""
    allowed = server_folders()
    if allowed is None:
        raise DataError(f"folder: reading folders on the server is turned off here ({FOLDERS_ENV}=0). "
                        "Upload a zip instead")
    text = str(path).strip().strip('"').strip("'")
    if not text:
        raise DataError("folder: Expected a folder path such as /home/me/photos. Received: nothing")
    p = Path(text).expanduser().resolve()
    if not any(p == a or a in p.parents for a in allowed):
        raise DataError(f"folder: Expected a folder under {', '.join(map(str, allowed))}. Received: {p}")
    if p.is_file() and zipfile.is_zipfile(p):
        return p
    if not p.is_dir():
        what = "a file, neither a folder nor a zip" if p.exists() else "does not exist"
        raise DataError(f"folder: Expected a folder of class folders (or a zip). Received: {p} ({what})")
    return p


# -- public datasets, downloaded on demand ---------------------------------------------------

_GCS = "https://storage.googleapis.com/"
PUBLIC_DATASETS = {
    # name: (label, {split: archive URL}); one archive of class folders is split here
    "cats_and_dogs_filtered": ("Cats vs dogs (filtered, 3,000 photos)",
                               {"all": _GCS + "mledu-datasets/cats_and_dogs_filtered.zip"}),
    "horse-or-human": ("Horse or human (1,283 renders)",
                       {"train": _GCS + "learning-datasets/horse-or-human.zip",
                        "validation": _GCS + "learning-datasets/validation-horse-or-human.zip"}),
    "rock-paper-scissors": ("Rock paper scissors (2,892 renders)",
                            {"train": _GCS + "learning-datasets/rps.zip",
                             "validation": _GCS + "learning-datasets/rps-test-set.zip"}),
    "tf_flowers": ("TF flowers (3,670 photos, 5 classes)",
                   {"all": _GCS + "download.tensorflow.org/example_images/flower_photos.tgz"}),
}


def download_dataset(name: str) -> Path:
    """Download (once, into the Keras cache) and unpack a public dataset; return its folder.

    Offline, raises :class:`DataError` saying so and suggesting an upload instead.
    """
    if name not in PUBLIC_DATASETS:
        raise DataError(f"dataset: Expected one of {', '.join(PUBLIC_DATASETS)}. Received: {name!r}")
    import tarfile

    import keras

    folder = cache_dir() / "public" / name
    if (folder / ".complete").exists():
        return folder
    roots = {}
    for split, url in PUBLIC_DATASETS[name][1].items():
        fname = f"{name}-{split}-{Path(url).name}"
        try:
            archive = Path(keras.utils.get_file(fname, url, cache_subdir="datasets"))
        except Exception as e:
            raise DataError(f"could not download {name} from {url} (no internet connection?): "
                            f"{str(e).splitlines()[0][:200]}. Upload a zip of class folders instead") from None
        if zipfile.is_zipfile(archive):
            roots[split] = _unwrap(extract_zip(archive))
        else:
            dest = cache_dir() / "public" / f"{name}-{split}"
            if not (dest / ".complete").exists():
                with tarfile.open(archive) as tf:
                    tf.extractall(dest, filter="data")  # the data filter refuses paths outside dest
                (dest / ".complete").write_text("ok")
            roots[split] = _unwrap(dest)
    folder.mkdir(parents=True, exist_ok=True)
    for split, root in roots.items():
        link = folder / ("data" if split == "all" else split)
        if not link.exists():
            link.symlink_to(root, target_is_directory=True)
    (folder / ".complete").write_text("ok")
    return folder / "data" if "all" in roots else folder


# -- pixels ------------------------------------------------------------------------------

def load_arrays(paths: list[str], size: int) -> np.ndarray:
    """Decode files (through the one decode path) into an ``(N, size, size, 3)`` uint8 array."""
    out = np.empty((len(paths), size, size, 3), np.uint8)

    def load(i):
        out[i] = decode_image(paths[i], size)

    with ThreadPoolExecutor(WORKERS) as pool:
        try:
            list(pool.map(load, range(len(paths))))
        except ImageDecodeError as e:
            raise DataError(f"a file changed since the data was checked: {e.reason}") from None
    return out


# -- the built-in sample -------------------------------------------------------------------

SAMPLE_CLASSES = ("circle", "square", "triangle")
SAMPLE_IMAGE_SIZE = 96  # train the sample at its native size: ~5x faster than 224 px


def make_sample_dataset(dest: str | Path | None = None, per_class: int = 40, size: int = SAMPLE_IMAGE_SIZE,
                        seed: int = 0) -> Path:
    """Write the built-in sample: coloured shapes on noisy backgrounds, 3 classes.

    Generated offline and deterministically; each class has its own shape and
    a hue range of its own, so even an untrained base separates them.
    """
    from PIL import Image, ImageDraw

    dest = Path(dest) if dest else cache_dir() / f"sample-{per_class}-{size}-{seed}"
    if (dest / ".complete").exists():
        return dest
    rng = np.random.default_rng(seed)
    tints = {"circle": (220, 60, 60), "square": (60, 180, 70), "triangle": (60, 90, 220)}
    for name in SAMPLE_CLASSES:
        (dest / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            bg = rng.integers(90, 200, 3)
            noise = rng.normal(0, 18, (size, size, 3))
            img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
            d = ImageDraw.Draw(img)
            r = rng.integers(size // 6, size // 3)
            cx, cy = rng.integers(r, size - r, 2)
            colour = tuple(int(np.clip(c + rng.integers(-35, 35), 0, 255)) for c in tints[name])
            if name == "circle":
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif name == "square":
                d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
            else:
                d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            img.save(dest / name / f"{name}_{i:03d}.png")
    (dest / ".complete").write_text("ok")
    return dest
