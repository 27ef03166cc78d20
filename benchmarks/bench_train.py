"""Course recipe vs Transfer Lab's training: the issue's speed targets, as ratios measured in one run.

The course recipe: the whole frozen model is fit every epoch through Keras'
per-image Python generator (``ImageDataGenerator`` with the course's
augmentation, reading and decoding every image again each epoch), with the
course's head (Flatten → Dense 1024 → Dropout 0.2). Transfer Lab: a frozen base
and no augmentation, so base features are computed once (cold cache) and only
the head trains on them; with augmentation, a ``tf.data`` pipeline.

Targets printed, each a ratio of times measured in this run (ours runs before the course recipe
and again after it; (a) and (b) use the mean of the two, so a drift of the machine's speed over
the minutes the course recipe takes weighs on both sides alike; so does the augmented run, whose
images per second (d) are the mean of the two):

(a) course recipe / ours, both with the course head                          ≥ 8×
(b) course recipe / ours with a global-pooling head (GAP → Dense 128)          ≥ 15×
(c) ours / (one pass of the base over the data + the head's own training)    ≤ 1.2×
(d) images per second with augmentation: our tf.data path / the course recipe ≥ 2×
and the best validation accuracy of each, which should agree within a point.

The generated set's MobileNet (alpha 0.25) has no pretrained weights to use here. Built with
``weights=None`` its features vanish (about 1e-17: BatchNorm's moving statistics are still 0 and
1, and each of its 27 blocks shrinks the signal), so every recipe stays at chance and the
accuracy check says nothing. By default the benchmark first saves a weights file of that random
base with its BatchNorm statistics measured on 256 training images (the same architecture and
cost, features of order 1) and both recipes start from it; ``--generated-weights none`` keeps the
plain random base.

    python benchmarks/bench_train.py                          # rps_phone and a generated set
    python benchmarks/bench_train.py --dataset rps            # ../shared/data/rps_phone, MobileNetV2 160
    python benchmarks/bench_train.py --dataset generated --generated-images 3000 --generated-size 224
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

COURSE_HEAD = dict(pooling="flatten", dense=[1024], dropout=0.2)
GAP_HEAD = dict(pooling="gap", dense=[128], dropout=0.2)


def fresh_cache() -> None:
    """A cold start: an empty feature cache and no decoded images kept in memory."""
    import core.train

    os.environ["TRANSFER_LAB_CACHE"] = tempfile.mkdtemp(prefix="bench-cache-")
    core.train._ARRAYS.clear()


def course_recipe(config, data, epochs: int) -> tuple[float, float, list[float]]:
    """Seconds, best validation accuracy and seconds per epoch of the course's generator-fed fit."""
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
    per_epoch = []

    class EpochTimes(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            per_epoch.append(time.perf_counter() - self.t)

    t = time.perf_counter()
    hist = built.model.fit(train_it, validation_data=val_it, epochs=epochs, verbose=0, callbacks=[EpochTimes()])
    seconds = time.perf_counter() - t
    return seconds, float(np.max(hist.history["val_accuracy"])), per_epoch


def calibrated_weights(data, size: int, alpha: float, folder: Path, seed: int = 0) -> str:
    """A weights file of a random MobileNet whose BatchNorm statistics are those of 256 training images."""
    import keras
    import numpy as np

    from core.config import ExperimentConfig
    from core.data import load_arrays
    from core.model import build_model
    from core.train import recalibrate_batchnorm

    keras.utils.set_random_seed(seed)
    # unlocked, so that recalibrate_batchnorm measures every BatchNorm layer
    config = ExperimentConfig(base="mobilenet", alpha=alpha, image_size=size, weights="none", freeze="none")
    built = build_model(config, len(data.class_names))
    paths = list(np.random.default_rng(seed).permutation(data.train.paths)[:256])
    recalibrate_batchnorm(built, load_arrays(paths, size), batch_size=32, limit=256)
    path = folder / f"mobilenet_{alpha}_{size}_calibrated.weights.h5"
    built.base.save_weights(path)
    return str(path)


def transfer_lab(config, data):
    from core.train import train

    fresh_cache()
    t = time.perf_counter()
    r = train(config, data)
    return time.perf_counter() - t, r


def by_hand(config, data) -> tuple[float, dict]:
    """The least work for the same result: build, decode, one pass of the base, fit the head."""
    import keras
    import numpy as np

    from core.data import load_arrays
    from core.model import build_model
    from core.train import _head_model, compile_model

    t0 = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    built = build_model(config, len(data.class_names))
    t1 = time.perf_counter()
    x_train = load_arrays(data.train.paths, built.image_size)
    x_val = load_arrays(data.validation.paths, built.image_size)
    t2 = time.perf_counter()
    extractor = keras.Model(built.model.inputs, built.head_layers[0].output)
    bs = config.batch_size
    feats = [np.concatenate([np.asarray(extractor.predict_on_batch(x[i:i + bs].astype(np.float32)))
                             for i in range(0, len(x), bs)]) for x in (x_train, x_val)]
    t3 = time.perf_counter()
    head = _head_model(built)
    compile_model(head, config, fuse=True)  # compiled as ours is (a large head: fused updates)
    head.fit(feats[0], data.train.labels, validation_data=(feats[1], data.validation.labels),
             batch_size=bs, epochs=config.epochs, verbose=0)
    t4 = time.perf_counter()
    return t4 - t0, {"build": t1 - t0, "decode": t2 - t1, "base pass": t3 - t2, "head fit": t4 - t3}


def best_of(repeats: int, fn):
    """The fastest of ``repeats`` runs (the machine is shared: the least disturbed one)."""
    runs = [fn() for _ in range(max(1, repeats))]
    return min(runs, key=lambda r: r[0])


def bench(name: str, data, base_kw: dict, epochs: int, aug_epochs: int, repeats: int = 1) -> dict:
    from core.config import ExperimentConfig

    def cfg(head, **kw):
        return ExperimentConfig(**{**base_kw, "epochs": epochs, **head, **kw}).validate()

    n_train = len(data.train)
    print(f"\n== {name}: {data.summary()}; {base_kw['base']} alpha {base_kw['alpha']} {base_kw['image_size']} px, "
          f"weights {cfg(GAP_HEAD).weights_label()}, {epochs} epochs", flush=True)

    ours_course_s, r_course = best_of(repeats, lambda: transfer_lab(cfg(COURSE_HEAD), data))
    t = r_course.timings
    print(f"ours, course head : {ours_course_s:7.1f} s  best val_accuracy {max(h['val_accuracy'] for h in r_course.history):.4f}  "
          f"(build {t['build_s']:.1f}, decode {t['decode_s']:.1f}, base features {t.get('features_s', 0):.1f}, "
          f"head fit {t['fit_s']:.1f} s)", flush=True)
    ours_gap_s, r_gap = best_of(repeats, lambda: transfer_lab(cfg(GAP_HEAD), data))
    t = r_gap.timings
    print(f"ours, GAP head    : {ours_gap_s:7.1f} s  best val_accuracy {max(h['val_accuracy'] for h in r_gap.history):.4f}  "
          f"(build {t['build_s']:.1f}, decode {t['decode_s']:.1f}, base features {t.get('features_s', 0):.1f}, "
          f"head fit {t['fit_s']:.1f} s)", flush=True)
    hand_s, parts = best_of(repeats, lambda: by_hand(cfg(COURSE_HEAD), data))
    print(f"by hand, course head (build + decode + one base pass + head fit): {hand_s:7.1f} s  ("
          + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + " s)", flush=True)
    def augmented(when: str) -> tuple[float, float]:
        """Images per second of ours with augmentation, and after its first epoch."""
        _, r_aug = transfer_lab(cfg(COURSE_HEAD, augment="default", epochs=aug_epochs), data)
        # the fit and the one pass over the validation images (a locked base: validated on features)
        aug_s = r_aug.timings["fit_s"] + r_aug.timings.get("features_s", 0.0)
        rate = n_train * len(r_aug.history) / aug_s
        later = [h["seconds"] for h in r_aug.history[1:]]
        steady = n_train * len(later) / sum(later) if later else float("nan")
        print(f"ours, augmented (tf.data), {aug_epochs} epochs, {when}: fit {r_aug.timings['fit_s']:.1f} s + validation "
              f"features {r_aug.timings.get('features_s', 0.0):.1f} s, "
              f"{rate:.1f} images/s ({steady:.1f} after the first epoch)", flush=True)
        return rate, steady

    aug_before = augmented("before the course recipe")
    course_s, course_acc, course_epochs = course_recipe(cfg(COURSE_HEAD), data, epochs)
    course_rate = n_train * epochs / course_s
    course_steady = n_train * (len(course_epochs) - 1) / sum(course_epochs[1:]) if len(course_epochs) > 1 else float("nan")
    print(f"course recipe     : {course_s:7.1f} s  best val_accuracy {course_acc:.4f}  ({course_rate:.1f} images/s, "
          f"{course_steady:.1f} after the first epoch)", flush=True)

    # ours again after the course recipe: the machine's speed drifts over minutes, and (a) and (b)
    # divide by the mean of ours just before and just after it
    after_course_s, _ = transfer_lab(cfg(COURSE_HEAD), data)
    after_gap_s, _ = transfer_lab(cfg(GAP_HEAD), data)
    mean_course_s, mean_gap_s = (ours_course_s + after_course_s) / 2, (ours_gap_s + after_gap_s) / 2
    aug_after = augmented("after it")
    aug_rate, aug_steady = (aug_before[0] + aug_after[0]) / 2, (aug_before[1] + aug_after[1]) / 2
    print(f"ours again after it: course head {after_course_s:.1f} s (before {ours_course_s:.1f}, mean {mean_course_s:.1f}), "
          f"GAP head {after_gap_s:.1f} s (before {ours_gap_s:.1f}, mean {mean_gap_s:.1f})", flush=True)

    acc_course = max(h["val_accuracy"] for h in r_course.history)
    acc_gap = max(h["val_accuracy"] for h in r_gap.history)
    out = {
        "(a) course / ours, course head (>= 8x)": course_s / mean_course_s,
        "(b) course / ours, GAP head (>= 15x)": course_s / mean_gap_s,
        "(c) ours / by hand, course head (<= 1.2x)": ours_course_s / hand_s,
        "(d) augmented images/s, tf.data / course (>= 2x)": aug_rate / course_rate,
        "(d') the same after the first epoch (tracing, warm-up)": aug_steady / course_steady,
    }
    print(f"-- {name} ratios:")
    for k, v in out.items():
        print(f"   {k}: {v:.2f}x")
    print(f"   best val_accuracy: course recipe {course_acc:.4f}, ours course head {acc_course:.4f} "
          f"({100 * (acc_course - course_acc):+.1f} points), ours GAP head {acc_gap:.4f} "
          f"({100 * (acc_gap - course_acc):+.1f} points)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["both", "rps", "generated"], default="both")
    p.add_argument("--data", default=str(SHARED / "rps_phone"), help="the real set (default rps_phone)")
    p.add_argument("--weights", default=str(SHARED / "mobilenet_v2_1.0_160_no_top.weights.h5"))
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--generated-images", type=int, default=3000, help="images in the generated set (default 3000)")
    p.add_argument("--generated-size", type=int, default=224, help="their size in pixels (default 224)")
    p.add_argument("--generated-weights", choices=["calibrated", "none"], default="calibrated",
                   help="the generated set's base: random with BatchNorm statistics measured (default) or plain random")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--aug-epochs", type=int, default=10, help="epochs of the augmented run (images/s; the targets are for 10)")
    p.add_argument("--repeats", type=int, default=1, help="run ours and the by-hand baseline this many times, keep the fastest")
    args = p.parse_args()

    from core.data import load_dataset, make_sample_dataset
    from core.train import make_strategy

    make_strategy("auto")  # TensorFlow's start-up (seconds) is paid here, outside every timing
    results = {}
    if args.dataset in ("both", "rps"):
        data = load_dataset(args.data, val_split=0.2, seed=0)
        results["rps_phone"] = bench("rps_phone", data, dict(base="mobilenet_v2", alpha=1.0, image_size=args.image_size,
                                                             weights=args.weights), args.epochs, args.aug_epochs, args.repeats)
    if args.dataset in ("both", "generated"):
        n, size = args.generated_images, args.generated_size
        folder = make_sample_dataset(Path(tempfile.mkdtemp(prefix="bench-gen-")) / "gen", per_class=n // 3, size=size)
        data = load_dataset(folder, val_split=0.2, seed=0)
        weights = "none"
        if args.generated_weights == "calibrated":
            weights = calibrated_weights(data, size, 0.25, folder.parent)
            print(f"generated set's base: random MobileNet (alpha 0.25), BatchNorm statistics of 256 training "
                  f"images: {weights}", flush=True)
        results["generated"] = bench(f"generated ({n} images, {size} px)", data,
                                     dict(base="mobilenet", alpha=0.25, image_size=size, weights=weights),
                                     args.epochs, args.aug_epochs, args.repeats)
    print("\nsummary:")
    for name, out in results.items():
        print(f"  {name}: " + "; ".join(f"{k.split(' ')[0]} {v:.2f}x" for k, v in out.items()))


if __name__ == "__main__":
    main()
