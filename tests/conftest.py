"""Shared fixtures: small generated image sets and weights files; never the network."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# the test process has TensorFlow anyway: base facts computed here, no child per question
# (test_baseinfo and the browser test take the app's own child-process path)
os.environ.setdefault("TRANSFER_LAB_PROBE", "here")

COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Feature caches and extracted zips go to a temporary folder, not ~/.cache."""
    d = tmp_path_factory.mktemp("cache")
    old = os.environ.get("TRANSFER_LAB_CACHE")
    os.environ["TRANSFER_LAB_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("TRANSFER_LAB_CACHE", None)
    else:
        os.environ["TRANSFER_LAB_CACHE"] = old


def write_colour_images(root: Path, per_class: int = 12, size: int = 40, seed: int = 0,
                        classes=("blue", "green", "red"), ext: str = ".png") -> Path:
    """A separable set: each class is a noisy patch of its own colour on a grey background."""
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.full((size, size, 3), 128.0) + rng.normal(0, 12, (size, size, 3))
            a, b = rng.integers(0, size // 3, 2)
            arr[a:a + size // 2, b:b + size // 2] = np.asarray(COLOURS[name.lower()]) + rng.normal(0, 12, (size // 2, size // 2, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / name / f"{name}_{i:02d}{ext}")
    return root


@pytest.fixture
def colour_dir(tmp_path) -> Path:
    return write_colour_images(tmp_path / "colours")


@pytest.fixture(scope="session")
def colour_data_session(tmp_path_factory):
    from core.data import load_dataset

    root = write_colour_images(tmp_path_factory.mktemp("data") / "colours", per_class=16)
    return load_dataset(root, val_split=0.25, seed=0)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> dict:
    """Weight files for a tiny MobileNet (alpha 0.25, 32 px) in both file layouts, saved by Keras."""
    import keras

    d = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(1)
    base = keras.applications.MobileNet(alpha=0.25, include_top=False, input_shape=(32, 32, 3), weights=None)
    legacy = d / "mobilenet_2_5_32_tf_no_top.h5"
    base.save(legacy)  # the legacy HDF5 layout of Keras 2 applications files
    k3 = d / "mobilenet_0.25_32_no_top.weights.h5"
    base.save_weights(k3)
    return {"legacy": legacy, "keras3": k3, "weights": [np.array(w) for w in base.get_weights()]}


def tiny_config(**kw):
    from core.config import ExperimentConfig

    base = dict(base="mobilenet", alpha=0.25, image_size=32, weights="none", dense=[16], dropout=0.2,
                optimizer="adam", lr=3e-3, epochs=8, batch_size=16, seed=0)
    base.update(kw)
    return ExperimentConfig(**base)


def learner_config(**kw):
    """A base whose random (weights none) features are informative: ResNet50 at 32 px.

    Randomly initialised MobileNets' features fade to ~1e-18 through their ReLU6
    blocks, so a locked random MobileNet cannot separate anything; ResNet50's
    residual blocks keep the signal.
    """
    kw = {**dict(base="resnet50", alpha=1.0, image_size=32), **kw}
    return tiny_config(**kw)
