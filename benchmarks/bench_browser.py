"""First impressions in a real browser: how fast the app shell paints and pages switch.

Starts ``streamlit run streamlit_app.py`` on a free port, waits for its health
endpoint, then with Debian's headless Chromium measures:

- time to first meaningful paint: navigation start → the Data page's title and
  its "Use the sample dataset" button visible (first session, then a second one);
- page switch: sidebar click → the next page's title visible and the rerun done,
  for every page, twice round: the second round shows whether a switch
  rebuilds anything (it should not).

    python benchmarks/bench_browser.py [--rounds 2]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PAGES = [("2 · Base & layers", "Base & layers"), ("3 · Head & augmentation", "Head & augmentation"),
         ("4 · Train", "Train"), ("5 · Compare dropout", "Compare dropout"),
         ("6 · Evaluate & export", "Evaluate & export"), ("1 · Data", "Data")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_idle(page, timeout: float = 120) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            time.sleep(0.1)
            if page.locator('[data-testid="stStatusWidget"]').count() == 0:
                return
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = dict(os.environ, TRANSFER_LAB_CACHE=tempfile.mkdtemp(prefix="tl_bench_"), TF_CPP_MIN_LOG_LEVEL="2")
    t_start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=1) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.1)
        server_up = time.perf_counter() - t_start
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            paints = []
            for _ in range(2):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                t = time.perf_counter()
                page.goto(url)
                page.get_by_role("button", name="Use the sample dataset").wait_for(timeout=60000)
                paints.append(time.perf_counter() - t)
            page.get_by_role("button", name="Use the sample dataset").click()
            page.get_by_text("Images per class").first.wait_for(timeout=120000)
            wait_idle(page)
            switches: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                for link, title in PAGES:
                    t = time.perf_counter()
                    page.get_by_role("link", name=link).first.click()
                    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=120000)
                    wait_idle(page)
                    switches.setdefault(title, []).append(time.perf_counter() - t)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(15)

    print(f"server healthy after {server_up:.1f} s")
    print(f"first meaningful paint: first session {paints[0]:.2f} s, second session {paints[1]:.2f} s (target < 3 s)")
    print(f"{'page':<22}" + "".join(f"  visit {i + 1:>2}" for i in range(args.rounds)))
    for title, times in switches.items():
        print(f"{title:<22}" + "".join(f"  {t:7.2f} s" for t in times))
    later = [t for times in switches.values() for t in times[1:]]
    first = [times[0] for times in switches.values()]
    if later:
        print(f"median switch: first visits {statistics.median(first):.2f} s, later visits "
              f"{statistics.median(later):.2f} s (ratio later/first {statistics.median(later) / statistics.median(first):.2f})")


if __name__ == "__main__":
    main()
