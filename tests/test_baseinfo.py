"""Base facts for the pages: the same answers as the Keras base, kept on disk, asked of a child
process so the app itself never imports TensorFlow."""
from __future__ import annotations

import json

import pytest

import core.baseinfo as bi
from core.bases import build_base, cut_choices, suggested_cuts
from core.config import ExperimentConfig
from core.freeze import layer_rows, lock_param_counts, lockable_names, unlocked_batchnorm


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFER_LAB_CACHE", str(tmp_path))
    bi._known_info.cache_clear()
    bi._PROBLEMS.clear()
    yield tmp_path
    bi.release()
    bi._known_info.cache_clear()
    bi._PROBLEMS.clear()


@pytest.mark.parametrize("config", [
    ExperimentConfig(base="mobilenet_v2", alpha=0.35, image_size=96, weights="none", freeze="up-to:block_5_add"),
    ExperimentConfig(base="mobilenet_v2", alpha=0.35, image_size=96, weights="x.h5", freeze="top:12",
                     train_batchnorm=True, cut="block_13_expand_relu", pooling="flatten"),
])
def test_info_gives_what_the_keras_base_gives(config):
    base = build_base("mobilenet_v2", 96, 0.35, "none")
    info = bi.describe_base(base)
    assert len(info.layers) == len(base.layers) and info.name == base.name
    again = bi.BaseInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert again == info  # JSON round trip
    for fn in (lambda b: layer_rows(b, config), lambda b: lock_param_counts(b, config, 3),
               lambda b: lockable_names(b, config), lambda b: unlocked_batchnorm(b, config),
               lambda b: cut_choices(b, "mobilenet_v2"), lambda b: suggested_cuts(b, "mobilenet_v2")):
        assert fn(again) == fn(base)
    counts = lock_param_counts(again, config, 3)
    kept = info.layers[: (info.names().index(config.cut) if config.cut else len(info.layers) - 1) + 1]
    assert counts["base_trainable"] + counts["base_locked"] == sum(layer.params for layer in kept)


def test_facts_come_from_a_child_process_and_then_from_disk(fresh, monkeypatch, tmp_path):
    monkeypatch.setattr(bi, "WHERE", "child")
    missing = tmp_path / "no_such.weights.h5"
    info, problem = bi.base_facts("mobilenet_v2", 96, 0.35, str(missing))
    assert info == bi.describe_base(build_base("mobilenet_v2", 96, 0.35, "none"))
    assert problem and "no_such.weights.h5" in problem
    files = list((fresh / "bases").glob("*.json"))
    assert len(files) == 1 and "mobilenet_v2-a0.35-96px" in files[0].name
    assert bi.known("mobilenet_v2", 96, 0.35, str(missing))
    assert bi._POOL is not None  # the child stays a while for the next question
    bi.release()
    assert bi._POOL is None

    def no_child(*a, **kw):
        raise AssertionError("asked again")

    monkeypatch.setattr(bi, "_run", no_child)
    bi._known_info.cache_clear()  # a new app process: read back from disk, nothing computed
    assert bi.base_info("mobilenet_v2", 96, 0.35) == info
    missing.write_bytes(b"not hdf5")  # the file changed: asked again
    with pytest.raises(AssertionError, match="asked again"):
        bi.base_facts("mobilenet_v2", 96, 0.35, str(missing))


def test_unknown_base_is_refused_before_any_child(fresh, monkeypatch):
    monkeypatch.setattr(bi, "_run", lambda *a: pytest.fail("a child was started"))
    with pytest.raises(ValueError, match="base: Expected one of"):
        bi.base_facts("vgg_nope", 96, 1.0)


def test_prefetch_is_never_a_thread_building_in_this_process(monkeypatch):
    monkeypatch.setattr(bi, "WHERE", "here")
    assert bi.prefetch("mobilenet_v2", 96, 0.35) is None


@pytest.mark.parametrize("junk", [b"\x00\xffnot json", b"null", b'{"name": "x", "layers": []}',
                                  b'{"name": "x", "layers": [{"name": "a"}]}'])
def test_a_damaged_cache_file_is_computed_again(fresh, monkeypatch, junk):
    monkeypatch.setattr(bi, "WHERE", "here")
    good = bi.base_info("mobilenet_v2", 96, 0.35)
    (f,) = (fresh / "bases").glob("*.json")
    f.write_bytes(junk)
    bi._known_info.cache_clear()  # a new app process finds the damaged file
    assert not bi.known("mobilenet_v2", 96, 0.35)
    assert bi.base_info("mobilenet_v2", 96, 0.35) == good
    assert bi.BaseInfo.from_dict(json.loads(f.read_text())) == good  # written anew


def test_a_child_ended_between_questions_is_replaced_not_answered_here(monkeypatch):
    import os

    monkeypatch.setattr(bi, "WHERE", "child")
    first = bi._run(os.getpid)
    assert first != os.getpid() and bi._POOL is not None
    bi._POOL.shutdown(wait=True)  # as if released by another thread after this one took the pool
    second = bi._run(os.getpid)
    assert second not in (first, os.getpid())  # a new child answered, not the app process
    bi.release()
    assert bi._POOL is None and bi._TIMER is None
