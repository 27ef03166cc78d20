"""Drive the running app in headless Chromium and write screenshots to docs/.

Start the app first: streamlit run streamlit_app.py --server.port 8599 --server.headless true
Then: python tests/e2e/shots.py [--rps]  (--rps: upload the phone photos and the weights file)
"""
import re
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

URL = "http://localhost:8599"
DOCS = Path(__file__).resolve().parents[2] / "docs"
RPS = "--rps" in sys.argv


def wait_idle(page, timeout=120):
    """Wait until Streamlit's 'running' indicator is gone."""
    t = time.time()
    time.sleep(0.8)
    while time.time() - t < timeout:
        if page.locator('[data-testid="stStatusWidget"]').count() == 0:
            return
        time.sleep(0.5)


def shot(page, name):
    wait_idle(page)
    time.sleep(1.0)
    page.screenshot(path=str(DOCS / name), full_page=True)
    print("wrote", DOCS / name, flush=True)


def nav(page, label):
    page.get_by_role("link", name=label).first.click()
    wait_idle(page)


def main():
    DOCS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(URL)
        page.get_by_role("button", name="Use the sample dataset").wait_for(timeout=60000)
        t0 = time.time()
        if RPS:
            import shutil, tempfile
            zdir = tempfile.mkdtemp()
            zpath = shutil.make_archive(str(Path(zdir) / "rps_phone"), "zip", "/work/shared/data", "rps_phone")
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(zpath)
            page.get_by_text("Images per class", exact=True).wait_for(timeout=180000)
        else:
            page.get_by_role("button", name="Use the sample dataset").click()
            page.get_by_text("Images per class", exact=True).wait_for(timeout=60000)
        shot(page, "data.png" if not RPS else "rps_data.png")

        nav(page, "2 · Base & layers")
        page.get_by_text("Locked layers").wait_for(timeout=120000)
        if RPS:
            size = page.get_by_role("spinbutton", name=re.compile("Image size"))
            size.fill("160")
            size.press("Enter")
            wait_idle(page)
            page.get_by_text("A weights file I upload").click()
            wait_idle(page)
            page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
                "/work/shared/data/mobilenet_v2_1.0_160_no_top.weights.h5")
            page.get_by_text("fits MobileNetV2 at 160").wait_for(timeout=120000)
        else:
            page.get_by_text("ImageNet weights are not available here").wait_for(timeout=120000)
            shot(page, "base_offline.png")
            page.get_by_role("button", name=re.compile("Train from scratch")).click()
            page.get_by_text("the base starts with random weights").wait_for(timeout=60000)
        shot(page, "base.png" if not RPS else "rps_base.png")

        nav(page, "3 · Head & augmentation")
        page.get_by_text("Output layer").wait_for(timeout=60000)
        shot(page, "head.png" if not RPS else "rps_head.png")

        nav(page, "4 · Train")
        page.get_by_role("button", name="Train").wait_for(timeout=60000)
        page.get_by_role("button", name="Train").click()
        page.get_by_text("best validation accuracy").first.wait_for(timeout=600000)
        print("train done after", round(time.time() - t0), "s since data", flush=True)
        shot(page, "train.png" if not RPS else "rps_train.png")
        if RPS:
            print(page.locator('[data-testid="stAlertContentSuccess"]').first.inner_text())
            browser.close()
            return

        nav(page, "5 · Compare dropout")
        page.get_by_role("button", name="Compare").click()
        page.get_by_text("Best: dropout").wait_for(timeout=600000)
        shot(page, "compare.png")

        nav(page, "6 · Evaluate & export")
        page.get_by_text("Download model.keras").wait_for(timeout=120000)
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download model.keras").click()
        path = DOCS.parent / "runs" / "downloaded_model.keras"
        path.parent.mkdir(exist_ok=True)
        dl.value.save_as(path)
        print("downloaded", path, path.stat().st_size, "bytes; whole flow", round(time.time() - t0), "s", flush=True)
        shot(page, "evaluate.png")
        browser.close()


if __name__ == "__main__":
    main()
