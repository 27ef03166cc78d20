"""The whole flow in a real browser: Debian's Chromium driven by Playwright.

Starts ``streamlit run streamlit_app.py`` on a free port, waits for its health
endpoint, then walks the six pages as a newcomer would with the built-in
sample: sample → base with weights none → lock all → head with dropout →
train 2 epochs → compare two dropout rates → evaluate → download model.keras
(reloaded and run here). A second test uploads a generated zip through the
real file input. Browser console errors, uncaught page errors and Python
exceptions shown on a page fail the tests. Screenshots of every page go to
``$E2E_SHOTS`` (default: a temporary folder named in the output).

Skipped when /usr/bin/chromium or Playwright is missing (``.ci/run`` installs both).
"""
from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")

# Console noise that is not ours: the browser's own blocked requests on a closed network.
IGNORED_CONSOLE = re.compile(r"(ERR_INTERNET_DISCONNECTED|ERR_NAME_NOT_RESOLVED|net::ERR_|favicon)", re.I)
# A 404 shows in the console without its address: each one is judged by its response instead.
CONSOLE_404 = re.compile(r"Failed to load resource: the server responded with a status of 404")
# Loading a page's own address (a refresh on /train) makes Streamlit's frontend probe
# /train/_stcore/health and /train/_stcore/host-config before the right ones (streamlit#7074).
PAGE_PROBE_404 = re.compile(r"^https?://[^/]+/[\w-]+/_stcore/(health|host-config)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory) -> Path:
    d = Path(os.environ.get("E2E_SHOTS") or tmp_path_factory.mktemp("e2e_shots"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {d}")
    return d


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = dict(os.environ, TRANSFER_LAB_CACHE=str(tmp_path_factory.mktemp("e2e_cache")),
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", TRANSFER_LAB_PROBE="auto")
    log = tmp_path_factory.mktemp("e2e_log") / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("streamlit did not become healthy:\n" + log.read_text(errors="replace")[-3000:])
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        text = log.read_text(errors="replace")
        assert "Traceback (most recent call last)" not in text, "server log has a traceback:\n" + text[-4000:]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


class Session:
    """One browser tab on the app, collecting console errors and page errors."""

    def __init__(self, browser, url: str, shots: Path, width: int = 1400, height: int = 1000):
        self.page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
        self.errors: list[str] = []
        self.shots = shots
        self.page.on("console", self._console)
        self.page.on("response", self._response)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.set_default_timeout(120_000)
        self.page.goto(url)

    def _console(self, msg) -> None:
        if msg.type == "error" and not IGNORED_CONSOLE.search(msg.text) and not CONSOLE_404.search(msg.text):
            self.errors.append(f"console: {msg.text}")

    def _response(self, response) -> None:
        if response.status == 404 and not PAGE_PROBE_404.match(response.url):
            self.errors.append(f"404: {response.url}")

    def idle(self, timeout: float = 300) -> None:
        """Wait until Streamlit's running indicator has gone (a rerun finished)."""
        t = time.time()
        time.sleep(0.6)
        while time.time() - t < timeout:
            if self.page.locator('[data-testid="stStatusWidget"]').count() == 0:
                time.sleep(0.3)
                if self.page.locator('[data-testid="stStatusWidget"]').count() == 0:
                    return
            time.sleep(0.3)

    def check(self, where: str) -> None:
        """No Python exception on the page and no browser error so far."""
        exc = self.page.locator('[data-testid="stException"]')
        assert exc.count() == 0, f"{where}: exception shown: {exc.first.inner_text()[:1500]}"
        assert not self.errors, f"{where}: {self.errors}"

    def shot(self, name: str) -> Path:
        self.idle()
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def nav(self, label: str) -> None:
        self.page.get_by_role("link", name=label).first.click()
        self.idle()


def test_newcomer_walks_every_page_with_the_sample(server, browser, shots_dir, tmp_path):
    s = Session(browser, server, shots_dir)
    page = s.page
    t0 = time.time()
    page.get_by_role("button", name="Use the sample dataset").click()
    page.get_by_text("Images per class").first.wait_for()
    s.check("data")
    s.shot("1_data")

    s.nav("2 · Base & layers")
    page.get_by_text("None (from scratch)").first.click()
    s.idle()
    page.get_by_text("the base starts with random weights").first.wait_for()
    page.get_by_text("Lock all base layers").first.click()
    s.idle()
    s.check("base")
    s.shot("2_base")

    s.nav("3 · Head & augmentation")
    dropout = page.get_by_role("spinbutton", name=re.compile("Dropout after dense layer 1"))
    dropout.fill("0.30")
    dropout.press("Enter")
    s.idle()
    s.check("head")
    s.shot("3_head")

    s.nav("4 · Train")
    epochs = page.get_by_role("spinbutton", name=re.compile("^Epochs"))
    epochs.fill("2")
    epochs.press("Enter")
    s.idle()
    page.get_by_role("button", name="Train", exact=True).click()
    page.locator(".js-plotly-plot").first.wait_for(timeout=300_000)  # the live chart appears during the run
    page.get_by_text(re.compile("best validation accuracy", re.I)).first.wait_for(timeout=600_000)
    s.idle()
    assert page.locator(".js-plotly-plot").count() >= 1
    s.check("train")
    s.shot("4_train")

    s.nav("5 · Compare dropout")
    rates = page.get_by_role("textbox", name=re.compile("Dropout rates"))
    rates.fill("0, 0.5")
    rates.press("Enter")
    cmp_epochs = page.get_by_role("spinbutton", name=re.compile("Epochs per run"))
    cmp_epochs.fill("2")
    cmp_epochs.press("Enter")
    s.idle()
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text(re.compile("Best: dropout")).first.wait_for(timeout=600_000)
    s.idle()
    s.check("compare")
    s.shot("5_compare")

    s.nav("6 · Evaluate & export")
    button = page.get_by_role("button", name=re.compile("Download model.keras"))
    button.wait_for()
    with page.expect_download() as dl:
        button.click()
    path = tmp_path / "model.keras"
    dl.value.save_as(path)
    s.check("evaluate")
    s.shot("6_evaluate")

    # A refresh loses nothing: the same address brings back the dataset and every setting.
    page.reload()
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text(re.compile("built-in sample")).first.wait_for()
    sidebar.get_by_text(re.compile(r"dropout 0\.3\b")).first.wait_for()
    s.check("refresh")
    print(f"whole flow {time.time() - t0:.0f} s")

    # The downloaded file is a whole model: it loads and classifies a sample-sized image.
    code = ("import sys, numpy as np, keras; from core.export import read_class_names; "
            "m = keras.saving.load_model(sys.argv[1]); n = read_class_names(sys.argv[1]); s = m.input_shape[1]; "
            "p = m.predict(np.full((2, s, s, 3), 128, np.float32), verbose=0); "
            "print(p.shape[1], len(n), abs(float(p.sum()) - 2) < 1e-3)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["3", "3", "True"]


def _zip_of_class_folders() -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, colour in (("cats", (200, 60, 40)), ("dogs", (40, 60, 200))):
            for i in range(8):
                arr = np.clip(np.full((48, 48, 3), colour) + rng.normal(0, 15, (48, 48, 3)), 0, 255).astype(np.uint8)
                b = io.BytesIO()
                Image.fromarray(arr).save(b, "JPEG")
                z.writestr(f"pets/{name}/{name}_{i}.jpg", b.getvalue())
        z.writestr("pets/cats/broken.jpg", b"not a picture")
        z.writestr("__MACOSX/pets/cats/._cats_0.jpg", b"\x00\x05\x16\x07junk")
    return buf.getvalue()


def test_upload_a_zip_through_the_real_file_input(server, browser, shots_dir, tmp_path):
    s = Session(browser, server, shots_dir)
    zpath = tmp_path / "pets.zip"
    zpath.write_bytes(_zip_of_class_folders())
    s.page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(str(zpath))
    s.page.get_by_text("Images per class").first.wait_for()
    s.page.get_by_text(re.compile(r"^dogs \(\d+ train\)")).first.wait_for()  # the last class's thumbnails
    # The skip warning comes after every thumbnail: on a busy machine it can still be on its way when
    # the running indicator blinks off between two reruns, so it is waited for by its own text.
    s.page.get_by_text(re.compile(r"file\(s\) were skipped")).first.wait_for()
    s.idle()
    body = s.page.locator("section.main, [data-testid='stMain']").first.inner_text()
    assert "cats" in body and "dogs" in body
    assert re.search(r"\b1 file\(s\) were skipped", body), body[:2000]  # broken.jpg, listed with its reason
    assert "._cats_0.jpg" not in body  # OS junk is never shown as an image or a skip
    s.check("data upload")
    s.shot("1_data_zip")


@pytest.mark.parametrize("width", [390])
def test_narrow_screen_keeps_the_layout(server, browser, shots_dir, width):
    s = Session(browser, server, shots_dir, width=width, height=900)
    s.page.get_by_role("button", name="Use the sample dataset").click()
    s.page.get_by_text("Images per class").first.wait_for()
    s.idle()
    overflow = s.page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 2, f"the page scrolls sideways by {overflow} px at {width} px wide"
    s.check("narrow")
    s.shot(f"1_data_{width}px")
