"""The base-feature cache: hit, miss, invalidation by every keyed input, disk formats, the join."""
import shutil

import numpy as np
import pytest
from PIL import Image

import core.train as core_train
from core.data import load_arrays, load_dataset
from core.model import build_model
from core.train import features_key, train
from tests.conftest import tiny_config, write_colour_images


@pytest.fixture
def count_computes(monkeypatch):
    """How many times base features were computed (each call runs the base over both splits)."""
    calls = []
    original = core_train._compute_features

    def spy(*a, **k):
        calls.append(1)
        return original(*a, **k)

    monkeypatch.setattr(core_train, "_compute_features", spy)
    return calls


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("TRANSFER_LAB_CACHE", str(d))
    return d


def test_second_run_hits_the_cache_and_a_changed_image_misses(tmp_path, fresh_cache, count_computes):
    root = write_colour_images(tmp_path / "data", per_class=8)
    data = load_dataset(root, val_split=0.25, seed=0)
    cfg = tiny_config(epochs=1, seed=3)
    train(cfg, data)
    assert len(count_computes) == 1
    train(cfg, data)
    assert len(count_computes) == 1  # hit: no base call
    train(tiny_config(epochs=1, seed=3, dense=[4], dropout=0.5, lr=1e-3), data)
    assert len(count_computes) == 1  # the head is not keyed: another head reuses the features
    # the same file name, other pixels: a miss
    img = data.train.paths[0]
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(img)
    changed = load_dataset(root, val_split=0.25, seed=0)
    assert changed.train.paths == data.train.paths
    train(cfg, changed)
    assert len(count_computes) == 2
    assert len(list((fresh_cache / "features").iterdir())) == 2  # one folder per key, no leftovers


def _key(data, **kw):
    import keras

    cfg = tiny_config(**kw)
    keras.utils.set_random_seed(cfg.seed)  # as train() does
    built = build_model(cfg, len(data.class_names))
    return features_key(built, cfg, data)


def test_every_keyed_input_changes_the_key(colour_data_session, tmp_path):
    import keras

    data = colour_data_session
    files = []
    for seed in (5, 6):
        keras.utils.set_random_seed(seed)
        base = keras.applications.MobileNet(alpha=0.25, include_top=False, input_shape=(32, 32, 3), weights=None)
        files.append(tmp_path / f"w{seed}.weights.h5")
        base.save_weights(files[-1])
    copy = tmp_path / "elsewhere" / "same.weights.h5"
    copy.parent.mkdir()
    shutil.copy(files[0], copy)

    ref = _key(data, weights=str(files[0]))
    assert _key(data, weights=str(files[0])) == ref  # stable
    assert _key(data, weights=str(copy)) == ref  # keyed by the file's content, not its name
    changed = {
        "weights content": _key(data, weights=str(files[1])),
        "base": _key(data, weights="none", base="mobilenet_v2", alpha=0.35),
        "cut": _key(data, weights=str(files[0]), cut="conv_pw_11_relu"),
        "size": _key(data, weights=str(files[0]), image_size=48),
        "pooling": _key(data, weights=str(files[0]), pooling="flatten"),
        "random weights seed": _key(data, weights="none", seed=1),
    }
    assert _key(data, weights="none", seed=1) == changed["random weights seed"]
    assert ref not in changed.values() and len(set(changed.values())) == len(changed), changed
    # the split is part of the dataset: other files in train, another key
    other = load_dataset(data.root, val_split=0.5, seed=0)
    assert _key(other, weights=str(files[0])) != ref


def test_joined_model_predicts_what_the_head_predicts_on_the_cached_features(colour_data_session, fresh_cache, tmp_path):
    import keras

    data = colour_data_session
    r = train(tiny_config(epochs=2, weights="none", pooling="flatten"), data, run_dir=tmp_path / "run")
    assert r.path == "features"
    (folder,) = (fresh_cache / "features").iterdir()
    f_val = np.load(folder / "val.npy")
    base_index = next(i for i, layer in enumerate(r.model.layers) if isinstance(layer, keras.Model))
    y = f_val
    for layer in r.model.layers[base_index + 2:]:  # after the base and the flatten: dense, dropout, output
        y = layer(y)
    x = load_arrays(data.validation.paths, 32).astype(np.float32)
    from core.export import load_model

    saved, _ = load_model(tmp_path / "run" / "model.keras")
    np.testing.assert_allclose(saved.predict(x, verbose=0), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_large_features_are_float16_on_disk_and_read_as_a_memmap(colour_data_session, fresh_cache, monkeypatch):
    monkeypatch.setattr(core_train, "FLOAT16_BYTES", 0)
    monkeypatch.setattr(core_train, "MEMMAP_BYTES", 0)
    seen = []
    original = core_train._batches
    monkeypatch.setattr(core_train, "_batches", lambda x, *a: seen.append(type(x)) or original(x, *a))
    from tests.conftest import learner_config

    r = train(learner_config(epochs=3), colour_data_session)
    (folder,) = (fresh_cache / "features").iterdir()
    assert np.load(folder / "train.npy", mmap_mode="r").dtype == np.float16
    assert seen[0] == np.memmap and len(r.history) == 3  # the training features were never loaded whole
    assert r.history[-1]["loss"] < r.history[0]["loss"]

    # read from disk a batch at a time: the same batches as the loaded array gives, rows in file order
    mm = np.load(folder / "train.npy", mmap_mode="r")
    y = np.arange(len(mm)) % 3
    steps = core_train._steps(len(mm), 8)
    from_disk = list(original(mm, y, 8, 4, 2, 0))
    in_memory = list(original(np.asarray(mm, np.float32), y, 8, 4, 2, 0))
    assert len(from_disk) == len(in_memory) == 2 * steps
    for (a, ya), (b, yb) in zip(from_disk, in_memory):
        assert a.dtype.name == "float32" and a.shape == b.shape
        rows_a = sorted(map(tuple, np.c_[a.numpy().reshape(len(a), -1), ya.numpy()]))
        rows_b = sorted(map(tuple, np.c_[b.numpy().reshape(len(b), -1), yb.numpy()]))
        assert rows_a == rows_b  # the same rows, each with its label


def test_the_feature_stream_gives_each_split_its_own_images_features(colour_data_session, tmp_path):
    """Splits streamed as one run of equal batches (a batch holding the end of one split and the
    start of the next, a padded last batch, an empty split, 8-bit and float images) give every
    image the features the base gives it alone."""
    import keras

    from core.train import StopFlag, _compute_features, _Recorder
    from tests.conftest import learner_config

    cfg = learner_config(pooling="flatten", batch_size=4)
    built = build_model(cfg, 3)
    x = load_arrays(colour_data_session.train.paths[:12], 32)
    splits = {"train": x[:7], "none": x[:0], "val": x[7:12]}
    recorder = _Recorder("r", cfg, [], StopFlag(), built.model, total_epochs=1)
    assert _compute_features(built, splits, 4, recorder, tmp_path, 12, float16=False)
    alone = keras.Model(built.model.inputs, built.head_layers[0].output)
    want = np.concatenate([np.asarray(alone(x[i:i + 1].astype(np.float32), training=False)) for i in range(12)])
    got = np.concatenate([np.load(tmp_path / f"{name}.npy") for name in splits])
    assert got.shape == (12, 2048) and np.abs(want).max() > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # float images (as a caller may pass) go through a trace of their own, to the same features
    floats = tmp_path / "floats"
    floats.mkdir()
    assert _compute_features(built, {"val": x[7:12].astype(np.float32)}, 4, recorder, floats, 5, float16=False)
    np.testing.assert_allclose(np.load(floats / "val.npy"), want[7:], rtol=1e-4, atol=1e-5)
