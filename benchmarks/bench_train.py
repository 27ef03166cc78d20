"""Course recipe vs Transfer Lab's training, same data, same base, same split, one run.

The course recipe: the whole frozen model is fit every epoch through Keras'
per-image Python generator (``ImageDataGenerator`` with the course's
augmentation, reading and decoding every JPEG again each epoch). Transfer Lab:
a frozen base and no augmentation, so base features are computed once and only
the head trains on them.

    python benchmarks/bench_train.py                       # ../shared/data/rps_phone, MobileNetV2 160
    python benchmarks/bench_train.py --data DIR --weights FILE --image-size 160 --epochs 10

Prints both wall times, their ratio, and both validation accuracies.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SHARED = ROOT.parent / "shared" / "data"


def course_recipe(config, data, epochs: int) -> tuple[float, float]:
    """Seconds and best validation accuracy of the course's generator-fed fit."""
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from core.model import build_model
    from core.train import compile_model

    ImageDataGenerator = tf.keras.preprocessing.image.ImageDataGenerator
    tf.keras.utils.set_random_seed(config.seed)
    size = config.resolved_image_size()
    built = build_model(config, len(data.class_names))  # same base, same head; preprocessing inside
    compile_model(built.model, config)
    frame = lambda ds: pd.DataFrame({"filename": ds.paths, "class": [data.class_names[i] for i in ds.labels]})
    train_gen = ImageDataGenerator(rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
                                   shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest")
    flow = dict(x_col="filename", y_col="class", target_size=(size, size), class_mode="sparse",
                classes=data.class_names, batch_size=config.batch_size, seed=config.seed)
    train_it = train_gen.flow_from_dataframe(frame(data.train), shuffle=True, **flow)
    val_it = ImageDataGenerator().flow_from_dataframe(frame(data.validation), shuffle=False, **flow)
    t = time.perf_counter()
    hist = built.model.fit(train_it, validation_data=val_it, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - t
    return seconds, float(np.max(hist.history["val_accuracy"]))


def transfer_lab(config, data) -> tuple[float, float, dict]:
    from core.train import train

    t = time.perf_counter()
    r = train(config, data)
    return time.perf_counter() - t, float(r.best_val_accuracy), r.timings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED / "rps_phone"))
    p.add_argument("--weights", default=str(SHARED / "mobilenet_v2_1.0_160_no_top.weights.h5"))
    p.add_argument("--base", default="mobilenet_v2")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--head", choices=["gap", "course"], default="gap",
                   help="gap: GAP → Dense 128 → Dropout 0.2; course: Flatten → Dense 1024 → Dropout 0.2")
    args = p.parse_args()

    os.environ["TRANSFER_LAB_CACHE"] = tempfile.mkdtemp(prefix="bench-cache-")  # no warm feature cache
    from core.config import ExperimentConfig
    from core.data import load_dataset

    head = dict(pooling="gap", dense=[128]) if args.head == "gap" else dict(pooling="flatten", dense=[1024])
    config = ExperimentConfig(base=args.base, alpha=args.alpha, image_size=args.image_size, weights=args.weights,
                              epochs=args.epochs, dropout=0.2, **head).validate()
    data = load_dataset(args.data, val_split=config.val_split, seed=config.seed)
    print(f"data: {args.data}: {data.summary()}; base {args.base} {args.image_size}px, "
          f"weights {config.weights_label()}, head {args.head}, {args.epochs} epochs", flush=True)

    ours_s, ours_acc, timings = transfer_lab(config, data)
    print(f"transfer lab : {ours_s:7.1f} s  best val_accuracy {ours_acc:.4f}  "
          f"(build {timings['build_s']:.1f} s, decode {timings['decode_s']:.1f} s, base features {timings.get('features_s', 0):.1f} s, "
          f"head fit {timings['fit_s']:.1f} s)", flush=True)
    course_s, course_acc = course_recipe(config, data, args.epochs)
    print(f"course recipe: {course_s:7.1f} s  best val_accuracy {course_acc:.4f}", flush=True)
    print(f"speed-up (course / transfer lab): {course_s / ours_s:.1f}x; "
          f"val accuracy difference {100 * (ours_acc - course_acc):+.1f} points")


if __name__ == "__main__":
    main()
