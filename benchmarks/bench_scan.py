"""Scanning and decoding a folder of phone-sized photos: speed and peak memory, one run.

Writes N JPEGs of phone sizes (12 MP 4032x3024 portrait and landscape, 4000x3000,
1920x1080; a few distinct photos repeated as separate files) into a temporary
folder of class folders, then, each in a fresh process so their peaks are their own:

  scan    core.data.load_dataset: decode every file once (check size, JPEG draft) and split
  arrays  core.data.load_arrays at 224 px: what training holds (resized, never full size)

    python benchmarks/bench_scan.py               # 2,000 images
    python benchmarks/bench_scan.py -n 5000 --keep /tmp/photos

Prints images per second and peak resident memory of each stage, and what holding
every photo at full resolution at once would take, for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [(4032, 3024), (3024, 4032), (4000, 3000), (1920, 1080)]
DISTINCT = 12  # distinct photos; the rest are copies written as their own files


def _photo(w: int, h: int, seed: int) -> bytes:
    """A phone-like JPEG: smooth shapes plus sensor noise, quality 90 (~2-4 MB at 12 MP)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 256 + 2, w // 256 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    noise = rng.normal(0, 6, (h, w // 4, 3)).astype(np.int16)
    arr = np.asarray(img, dtype=np.int16)
    arr[:, : noise.shape[1]] += noise  # texture in a strip is enough to give realistic file sizes
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_photos(root: Path, n: int, classes: int = 4) -> tuple[int, int]:
    """N photos in ``classes`` folders; returns (total bytes on disk, total full-resolution RGB bytes)."""
    photos = [(_photo(*SIZES[i % len(SIZES)], seed=i), SIZES[i % len(SIZES)]) for i in range(DISTINCT)]
    disk = pixels = 0
    for i in range(n):
        data, (w, h) = photos[i % DISTINCT]
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"IMG_{i:05d}.jpg").write_bytes(data)
        disk += len(data)
        pixels += w * h * 3
    return disk, pixels


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: its own, unlike ru_maxrss, which exec keeps)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage(name: str, folder: str) -> dict:
    """Run in a child process: one stage, its wall time and this process's peak RSS."""
    from core.data import files_under, load_arrays, load_dataset

    base = peak_rss_mb()
    out = {"base_rss_mb": base}
    t0 = time.perf_counter()
    if name == "scan":
        data = load_dataset(folder, val_split=0.2)
        out.update(images=len(data.train) + len(data.validation), skipped=len(data.skipped))
    else:  # the files the scan keeps (all of them here), decoded as training reads them
        paths = [str(p) for p in files_under(Path(folder))]
        x = load_arrays(paths, 224)
        out.update(images=len(paths), array_mb=x.nbytes / 2**20)
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="number of photos (default 2000)")
    ap.add_argument("--keep", help="write the photos here and keep them (reused when already there)")
    ap.add_argument("--stage", choices=["scan", "arrays"], help=argparse.SUPPRESS)
    ap.add_argument("folder", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.folder)))
        return
    tmp = None
    if args.keep:
        root = Path(args.keep)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_scan_")
        root = Path(tmp.name) / "photos"
    try:
        t0 = time.perf_counter()
        if not root.exists() or sum(1 for _ in root.rglob("*.jpg")) != args.n:
            disk, full = make_photos(root, args.n)
        else:
            disk = sum(p.stat().st_size for p in root.rglob("*.jpg"))
            full = sum(SIZES[i % DISTINCT % len(SIZES)][0] * SIZES[i % DISTINCT % len(SIZES)][1] * 3
                       for i in range(args.n))
        print(f"{args.n:,} photos ready in {time.perf_counter() - t0:.0f} s: {disk / 2**20:,.0f} MB on disk, "
              f"{full / 2**30:,.1f} GiB if every photo were held at full resolution at once", flush=True)
        env = {**os.environ, "TRANSFER_LAB_CACHE": str(Path(root).parent / "cache")}
        results = {}
        for name in ("scan", "arrays"):
            out = subprocess.run([sys.executable, __file__, "--stage", name, str(root)], env=env,
                                 capture_output=True, text=True, check=True)
            results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        s, a = results["scan"], results["arrays"]
        print(f"scan (decode every file once, check, split): {s['images']:,} images in {s['seconds']:.1f} s = "
              f"{s['images'] / s['seconds']:,.0f} images/s; peak RSS {s['peak_rss_mb']:,.0f} MB "
              f"(Python + core imported: {s['base_rss_mb']:,.0f} MB)")
        print(f"decode for training at 224 px (load_arrays): {a['images']:,} images in {a['seconds']:.1f} s = "
              f"{a['images'] / a['seconds']:,.0f} images/s; array {a['array_mb']:,.0f} MB; "
              f"peak RSS {a['peak_rss_mb']:,.0f} MB")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"peak RSS / full-resolution size: scan {s['peak_rss_mb'] * 2**20 / full:.3f}, "
              f"training arrays {a['peak_rss_mb'] * 2**20 / full:.3f}")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
