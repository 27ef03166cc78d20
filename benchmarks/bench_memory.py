"""Memory of the app and its training workers, measured in one run (Linux: reads /proc).

The sample-dataset flow through the real pages (streamlit.testing's AppTest
from streamlit_app.py), as the browser test walks it: Data → "Use the sample
dataset", Base & layers → weights none (no ImageNet download here), every base
layer locked (the default), Head, Train → Train. The run trains in its own
worker process; the base's layer facts come from a short-lived child process
(core.baseinfo), so the app itself never imports TensorFlow. This script
samples the resident set of the app process (this one) and of every child it
started (workers and base-facts children) every 50 ms.

Printed:
  (1) peak RSS of the app process, of its children, and of both together during the flow
      (target: at most 1.2 GB together; TensorFlow alone is about 0.6 GB)
  (1b) the same flow with the whole base unlocked and trained from scratch ("Train from
      scratch" on the Base page): not the target's flow, shown for what it costs
  (2) the app's RSS across 20 reruns of the Train page (target: flat within 10 %)
  (3) the app's RSS after each of two back-to-back runs, and each worker's peak
      (target: flat within 10 %; a worker's memory goes back when it ends)
  (4) the app's RSS once the Evaluate page has loaded the trained model (not part of the target)

    python benchmarks/bench_memory.py [--epochs 10] [--reruns 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
MB = 1024 * 1024


def rss(pid: int | str = "self") -> int:
    """Resident set size in bytes (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_self() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (workers, base-facts children and what they started)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Sampler:
    """Samples this process and every process below it every 50 ms."""

    def __init__(self):
        self.app_peak = self.children_peak = self.both_peak = 0
        self.worker_peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = os.getpid()
        while not self._stop.is_set():
            app = rss()
            children = 0
            for pid in descendants(me):
                r = rss(pid)
                children += r
                self.worker_peaks[pid] = max(self.worker_peaks.get(pid, 0), r)
            self.app_peak = max(self.app_peak, app)
            self.children_peak = max(self.children_peak, children)
            self.both_peak = max(self.both_peak, app + children)
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def report(self, what: str) -> None:
        print(f"    peak RSS  app {self.app_peak / MB:.0f} MB · its children {self.children_peak / MB:.0f} MB · "
              f"both together {self.both_peak / MB:.0f} MB  (target ≤ 1229 MB together: {what})", flush=True)


def train_once(at, timeout: float = 900) -> float:
    """Press Train on the Train page, wait for the worker, rerun; returns seconds."""
    t = time.perf_counter()
    at.button(key="train").click().run()
    assert not at.exception, at.exception
    run = at.session_state.run
    assert run.join(timeout), "the run did not end in time"
    at.run()
    assert not at.exception, at.exception
    p = run.snapshot()
    assert p.status == "finished", p.message
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10, help="epochs per run (the app's default is 10)")
    ap.add_argument("--reruns", type=int, default=20)
    args = ap.parse_args()
    os.environ["TRANSFER_LAB_CACHE"] = tempfile.mkdtemp(prefix="bench_memory_")

    from streamlit.testing.v1 import AppTest

    start = rss()
    print(f"app process at start (Streamlit, pandas, core; no TensorFlow): {start / MB:.0f} MB", flush=True)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=600)
    with Sampler() as s:
        at.run()
        at.button(key="use_sample").click().run()
        assert not at.exception, at.exception
        at.switch_page("pages/2_base.py").run()
        at.radio(key="w_weights").set_value("none").run()
        assert not at.exception, at.exception
        assert at.session_state.config.weights == "none" and at.session_state.config.freeze == "all"
        at.switch_page("pages/3_head.py").run()
        at.switch_page("pages/4_train.py").run()
        at.number_input(key="w_epochs").set_value(args.epochs).run()
        cfg = at.session_state.config
        print(f"flow: sample ({at.session_state.data.summary()}), {cfg.base} {cfg.resolved_image_size()} px, "
              f"weights {cfg.weights_label()}, lock {cfg.freeze}, {cfg.epochs} epochs", flush=True)
        secs1 = train_once(at)
        after1 = rss()
        w1 = dict(s.worker_peaks)
        print(f"\n(1) sample-dataset flow ({secs1:.0f} s of training; TensorFlow imported in the app: "
              f"{'tensorflow' in sys.modules})")
        s.report("the browser test's flow")

        reruns = []
        for _ in range(args.reruns):
            at.run()
            reruns.append(rss())
        assert not at.exception
        lo, hi = min(reruns), max(reruns)
        print(f"\n(2) {args.reruns} reruns of the Train page: app RSS first {reruns[0] / MB:.0f} MB, "
              f"last {reruns[-1] / MB:.0f} MB, min {lo / MB:.0f}, max {hi / MB:.0f}: spread {100 * (hi - lo) / lo:.1f} % "
              "(target ≤ 10 %)", flush=True)

        secs2 = train_once(at)
        after2 = rss()
        w2 = {pid: v for pid, v in s.worker_peaks.items() if pid not in w1}
        alive = {pid: rss(pid) for pid in s.worker_peaks if rss(pid)}  # e.g. multiprocessing's resource tracker
    print(f"\n(3) two back-to-back runs ({secs1:.0f} s, {secs2:.0f} s)")
    print(f"    app RSS after run 1 {after1 / MB:.0f} MB, after run 2 {after2 / MB:.0f} MB: "
          f"change {100 * (after2 - after1) / after1:+.1f} % (target within ±10 %)")
    print(f"    largest child peak RSS run 1 {max(w1.values(), default=0) / MB:.0f} MB, run 2 "
          f"{max(w2.values(), default=0) / MB:.0f} MB; children alive after the runs: {len(alive)}, "
          f"holding {sum(alive.values()) / MB:.0f} MB",
          flush=True)

    with Sampler() as s:
        at.switch_page("pages/2_base.py").run()
        at.radio(key="w_lock").set_value("none").run()
        assert at.session_state.config.freeze == "none"
        at.switch_page("pages/4_train.py").run()
        secs3 = train_once(at)
    print(f"\n(1b) the whole base trained from scratch (weights none, lock none; {secs3:.0f} s)")
    s.report("not the target's flow")
    at.switch_page("pages/6_evaluate.py").run()
    assert not at.exception, at.exception
    print(f"\n(4) after the Evaluate page (its predictions load the model in the app: TensorFlow imported "
          f"{'tensorflow' in sys.modules}): app RSS {rss() / MB:.0f} MB")
    print(f"    app process peak (VmHWM) over the whole benchmark: {peak_rss_self() / MB:.0f} MB", flush=True)


if __name__ == "__main__":  # spawn-started workers import this file as __mp_main__: keep work under this guard
    main()
