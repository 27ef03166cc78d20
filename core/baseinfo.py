"""What the pages ask of a base, answered without TensorFlow in the app process.

TensorFlow costs about 0.6 GB of memory in every process that imports it, and
training runs in a worker process of its own. The pages before training only
need facts about a base (each layer's name, type, output shape and weight
counts) and whether its weights can be had. So those facts are computed in a
short-lived child process (``spawn``), or right here when this process has
TensorFlow already; a base's layer facts are kept as JSON in the cache folder
(keyed by base, alpha, image size and the Keras version), so they are computed
once per machine, not once per session.

:class:`BaseInfo` is what ``core.freeze`` and ``core.bases`` read to build the
layer table, count parameters and list cut points; they accept a Keras model
too (described on the spot), so tests and the headless command can hand them
the real thing.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

INFO_VERSION = "1"
# "auto": in a child process unless TensorFlow is imported here already; "child" or "here" force it
WHERE = os.environ.get("TRANSFER_LAB_PROBE", "auto")


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str  # the layer's class name
    output_shape: tuple | None  # with the batch dimension (None); None for a layer with several outputs
    params: int  # every weight, as model.summary() counts
    trainable_params: int  # the weights training could change (BatchNorm's moving statistics never)


@dataclass(frozen=True)
class BaseInfo:
    name: str  # the Keras model's name
    layers: tuple[LayerInfo, ...]

    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def to_dict(self) -> dict:
        return {"name": self.name, "layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "BaseInfo":
        def shape(s):
            return None if s is None else tuple(s)

        return cls(d["name"], tuple(LayerInfo(layer["name"], layer["type"], shape(layer["output_shape"]),
                                              int(layer["params"]), int(layer["trainable_params"]))
                                    for layer in d["layers"]))


def _count(weights) -> int:
    total = 0
    for w in weights:
        n = 1
        for d in w.shape:
            n *= int(d)
        total += n
    return total


def describe_base(base) -> BaseInfo:
    """The facts of a (flat) Keras base, read without changing it."""
    layers = []
    for layer in base.layers:
        try:
            out = layer.output
            shape = None if isinstance(out, (list, tuple)) else tuple(None if d is None else int(d) for d in out.shape)
        except (AttributeError, ValueError):
            shape = None
        trainable = getattr(layer, "_trainable_variables", None) or layer.trainable_weights
        layers.append(LayerInfo(layer.name, type(layer).__name__, shape, _count(layer.weights), _count(trainable)))
    return BaseInfo(base.name, tuple(layers))


def as_info(base) -> BaseInfo:
    """``base`` as a BaseInfo (a Keras model is described on the spot)."""
    return base if isinstance(base, BaseInfo) else describe_base(base)


# -- answered in a child process ---------------------------------------------------------------------

def _facts(name: str, size: int, alpha: float, want_info: bool, weights: str | None) -> dict:
    """Runs where TensorFlow may be imported: the base's facts and/or why ``weights`` cannot be used."""
    from core.bases import build_base, imagenet_problem, weights_file_problem

    out = {}
    if want_info:
        out["info"] = describe_base(build_base(name, size, alpha, "none")).to_dict()
    if weights == "imagenet":
        out["problem"] = imagenet_problem(name, size, alpha)
    elif weights not in (None, "none"):
        out["problem"] = weights_file_problem(name, size, alpha, weights)
    return out


def _here() -> bool:
    return WHERE == "here" or (WHERE == "auto" and "tensorflow" in sys.modules)


KEEP_S = 60.0  # a child with TensorFlow stays this long after its last answer (the next base is quick)
_POOL = None
_TIMER: threading.Timer | None = None


def _run(fn, *args, nice: int = 0):
    """``fn(*args)`` in a ``spawn`` child (its TensorFlow goes when it ends), or here.

    The child is kept for :data:`KEEP_S` seconds after its last answer, so a user trying
    several bases pays TensorFlow's start-up once; :func:`release` ends it at once (before a
    training worker starts). ``nice``: the priority of a child started for this call (a
    prefetch yields the CPU to the page being used)."""
    global _TIMER
    if _here():
        return fn(*args)
    import concurrent.futures

    for _attempt in range(2):  # a child ended between two questions (release, its timer): one new child
        pool = _pool(nice)
        if pool is None:  # no child could be had: ask here
            return fn(*args)
        try:
            try:
                future = pool.submit(fn, *args)
            except (RuntimeError, OSError):  # shut down meanwhile, or no process could start
                release()
                continue
            try:
                return future.result()  # fn's own errors come through as they are
            except concurrent.futures.process.BrokenProcessPool:  # the child died
                release()
        finally:
            with _POOL_LOCK:
                if _POOL is pool:
                    _TIMER = threading.Timer(KEEP_S, release)
                    _TIMER.daemon = True
                    _TIMER.start()
    return fn(*args)


def _pool(nice: int):
    """The kept child (its timer stopped while it answers), or a new one; None if none can start."""
    global _POOL
    import concurrent.futures
    import multiprocessing

    with _POOL_LOCK:
        if _TIMER is not None:
            _TIMER.cancel()
        if _POOL is None:
            try:
                _POOL = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                               initializer=os.nice, initargs=(nice,))
            except OSError:
                return None
        return _POOL


def release() -> None:
    """End the child process now (its memory goes back); the next question starts a new one."""
    global _POOL, _TIMER
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
        if _TIMER is not None:
            _TIMER.cancel()
            _TIMER = None
    if pool is not None:  # idle when a worker is about to start (its launch check asked first): quick
        pool.shutdown(wait=True, cancel_futures=True)


def _info_file(name: str, size: int, alpha: float) -> Path:
    from importlib.metadata import PackageNotFoundError, version

    from core.data import cache_dir

    try:
        keras_version = version("keras")
    except PackageNotFoundError:
        keras_version = "unknown"
    return cache_dir() / "bases" / f"{name}-a{alpha:g}-{size}px-keras{keras_version}-v{INFO_VERSION}.json"


@functools.lru_cache(maxsize=32)
def _known_info(name: str, size: int, alpha: float) -> BaseInfo | None:
    f = _info_file(name, size, alpha)
    try:
        info = BaseInfo.from_dict(json.loads(f.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    # a damaged or foreign file is computed again, never shown
    return info if info.layers and info.layers[-1].output_shape else None


_PROBLEMS: dict[tuple, str | None] = {}
_LOCK = threading.Lock()  # one question at a time: a page and a prefetch never ask twice
_POOL_LOCK = threading.Lock()


def _stamp(weights: str) -> tuple:
    if weights in ("none", "imagenet"):
        return ()
    try:
        st = os.stat(weights)
        return (st.st_size, st.st_mtime_ns)
    except OSError:
        return ("missing",)


def base_facts(name: str, size: int, alpha: float, weights: str = "none", nice: int = 0) -> tuple[BaseInfo, str | None]:
    """The base's layer facts, and why ``weights`` ("imagenet", "none" or a file's path) cannot be
    used with it (None when they can). Each is computed once (at most one child process for
    both) and kept: layer facts on disk, weights answers for this process (a file by its size
    and time). Raises ValueError for a base the registry does not know."""
    from core.bases import get_spec

    get_spec(name)  # an unknown base is refused here, not in a child
    size, alpha = int(size), float(alpha)
    key = (name, size, alpha, weights, _stamp(weights))
    with _LOCK:
        return _facts_locked(name, size, alpha, weights, key, nice)


def _facts_locked(name, size, alpha, weights, key, nice):
    info = _known_info(name, size, alpha)
    need_problem = weights != "none" and key not in _PROBLEMS
    if info is None or need_problem:
        got = _run(_facts, name, size, alpha, info is None, weights if need_problem else None, nice=nice)
        if "info" in got:
            f = _info_file(name, size, alpha)
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_suffix(f".tmp-{uuid.uuid4().hex[:6]}")
            tmp.write_text(json.dumps(got["info"]), encoding="utf-8")
            tmp.replace(f)
            _known_info.cache_clear()
            info = BaseInfo.from_dict(got["info"])
        if need_problem:
            _PROBLEMS[key] = got.get("problem")
    return info, (_PROBLEMS.get(key) if weights != "none" else None)


def base_info(name: str, size: int, alpha: float) -> BaseInfo:
    """The base's layer facts (see :func:`base_facts`)."""
    return base_facts(name, size, alpha, "none")[0]


def known(name: str, size: int, alpha: float, weights: str = "none") -> bool:
    """Whether :func:`base_facts` would answer at once (nothing to compute)."""
    size, alpha = int(size), float(alpha)
    return _known_info(name, size, alpha) is not None and (
        weights == "none" or (name, size, alpha, weights, _stamp(weights)) in _PROBLEMS)


def prefetch(name: str, size: int, alpha: float, weights: str = "none") -> threading.Thread | None:
    """Start computing :func:`base_facts` in a child process in the background (a page about to
    need them); None when they are known already or would be computed in this process (no
    Keras model is built on a second thread of a process that may be using Keras)."""
    if _here():
        return None
    try:
        if known(name, size, alpha, weights):
            return None
    except (TypeError, ValueError):
        return None

    def work():
        try:
            base_facts(name, size, alpha, weights, nice=10)
        except Exception:  # the page that needs them asks again and shows the error
            pass

    t = threading.Thread(target=work, name="transfer-lab-prefetch", daemon=True)
    t.start()
    return t
