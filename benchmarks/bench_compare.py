"""A dropout comparison of K rates against one run: the issue's target (K = 4: at most 1.5×), measured in one run.

With a locked base and no augmentation the base features are computed once
and the heads of every rate train side by side in one fit, each also
re-scoring its training split in inference mode each epoch. Both sides start
cold, each in a fresh process with an empty feature cache, and are timed around
the training call itself (TensorFlow's start-up is paid before the clock starts):

    python benchmarks/bench_compare.py                  # ../shared/data/rps_phone, MobileNetV2 160 px, its weights
    python benchmarks/bench_compare.py --dataset generated --generated-images 900
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SHARED = ROOT.parent / "shared" / "data"


def _config(args):
    from core.config import ExperimentConfig

    if args.dataset == "rps":
        base = dict(base="mobilenet_v2", alpha=1.0, image_size=160, weights=args.weights)
    else:
        base = dict(base="resnet50", alpha=1.0, image_size=args.generated_size, weights="none")
    return ExperimentConfig(**base, freeze="all", dense=[128], dropout=0.2, epochs=args.epochs, seed=0)


def _data(args):
    from core.data import load_dataset, make_sample_dataset

    if args.dataset == "rps":
        return load_dataset(args.data, val_split=0.2, seed=0)
    folder = Path(tempfile.gettempdir()) / f"bench-compare-{args.generated_images}-{args.generated_size}"
    folder = make_sample_dataset(folder, per_class=args.generated_images // 3, size=args.generated_size)
    return load_dataset(folder, val_split=0.2, seed=0)


def child(args) -> None:
    """One side, in this (fresh) process: prints a JSON line with its seconds and accuracies."""
    os.environ["TRANSFER_LAB_CACHE"] = tempfile.mkdtemp(prefix="bench-compare-cache-")
    from core.compare import plan_comparison, run_comparison
    from core.train import make_strategy, train

    data = _data(args)
    config = _config(args)
    make_strategy("auto")  # TensorFlow's start-up, outside the timing
    t = time.perf_counter()
    if args.side == "one":
        r = train(config, data)
        accs = [r.best_val_accuracy]
        features = r.timings.get("features_s", 0.0)
    else:
        rates = [float(x) for x in args.rates.split(",")]
        result = run_comparison(plan_comparison(config, "dropout", rates), data)
        accs = [m.result.best_val_accuracy for m in result.members]
        features = result.members[0].result.timings.get("features_s", 0.0)  # one pass, shared by every head
    print(json.dumps({"seconds": time.perf_counter() - t, "accs": accs, "features_s": features,
                      "train": len(data.train), "val": len(data.validation)}))


def side(args, name: str) -> dict:
    cmd = [sys.executable, __file__, "--side", name, "--dataset", args.dataset, "--data", args.data,
           "--weights", args.weights, "--epochs", str(args.epochs), "--rates", args.rates,
           "--generated-images", str(args.generated_images), "--generated-size", str(args.generated_size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["rps", "generated"], default="rps" if (SHARED / "rps_phone").is_dir() else "generated")
    p.add_argument("--data", default=str(SHARED / "rps_phone"))
    p.add_argument("--weights", default=str(SHARED / "mobilenet_v2_1.0_160_no_top.weights.h5"))
    p.add_argument("--generated-images", type=int, default=900)
    p.add_argument("--generated-size", type=int, default=96)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rates", default="0,0.2,0.5,0.8")
    p.add_argument("--repeats", type=int, default=1, help="run each side this many times, keep the fastest")
    p.add_argument("--side", choices=["one", "compare"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        return child(args)
    k = len(args.rates.split(","))
    ones = [side(args, "one") for _ in range(args.repeats)]
    comps = [side(args, "compare") for _ in range(args.repeats)]
    one, comp = min(ones, key=lambda r: r["seconds"]), min(comps, key=lambda r: r["seconds"])
    print(f"data: {args.dataset}, {one['train']} train / {one['val']} validation images, {args.epochs} epochs")
    print(f"one run (rate 0.2)        : {one['seconds']:6.1f} s (base features {one['features_s']:.1f} s), "
          f"best val_accuracy {one['accs'][0]:.4f}")
    print(f"{k} rates ({args.rates}): {comp['seconds']:6.1f} s (base features {comp['features_s']:.1f} s, once), "
          f"best val_accuracy " + ", ".join(f"{a:.4f}" for a in comp["accs"]))
    print(f"ratio: {k} rates / one run = {comp['seconds'] / one['seconds']:.2f}x (target for 4 rates: <= 1.5x)")


if __name__ == "__main__":
    main()
