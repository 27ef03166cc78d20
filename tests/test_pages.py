"""The six pages through streamlit.testing's AppTest, from streamlit_app.py with switch_page.

Training is real but tiny (MobileNet alpha 0.25 at 32 px, weights none, 1–2 epochs)."""
import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.config import ExperimentConfig

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
TINY = dict(base="mobilenet", alpha=0.25, image_size=32, weights="none", freeze="none", dense=[16],
            epochs=2, batch_size=16)


def app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for k, v in state.items():
        at.session_state[k] = v
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


@pytest.fixture(scope="module")
def sample():
    from core.data import load_dataset, make_sample_dataset

    return load_dataset(make_sample_dataset(per_class=12, size=32))


@pytest.fixture(scope="module")
def trained(sample):
    from core.experiments import start_training

    run = start_training(ExperimentConfig(**TINY), sample)
    assert run.join(180) and run.result is not None, run.snapshot().message
    return run


def _png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buf, "PNG")
    return buf.getvalue()


def _zip(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


# -- Data ------------------------------------------------------------------------------------------

def test_app_opens_on_data_with_sidebar():
    at = app()
    at.run()
    assert not at.exception
    assert at.title[0].value == "Data"
    side = texts(at.sidebar.markdown)
    assert "not chosen yet" in side and "weights imagenet" in side


def test_sample_dataset_one_click():
    at = app()
    at.run()
    at.button(key="use_sample").click().run()
    assert not at.exception
    assert [m.value for m in at.metric][:3] == ["3", "96", "24"]
    assert "20% of each class is held out" in texts(at.info)
    assert at.session_state.data.class_names == ["circle", "square", "triangle"]
    assert at.session_state.data_source == "built-in sample"
    assert at.session_state.config.image_size == 96  # the sample's own size: fast to train


@pytest.mark.parametrize("files, message", [
    ({"readme.txt": b"hello", "photo.png": _png((0, 200, 0))}, "Expected one folder per class"),
    ({"cats/a.png": _png((200, 0, 0)), "cats/b.png": _png((0, 0, 200))}, "Expected at least 2 class folders"),
])
def test_bad_zip_is_a_clear_message(files, message):
    at = app()
    at.run()
    at.file_uploader(key="data_zip").set_value(("bad.zip", _zip(files), "application/zip")).run()
    assert not at.exception
    assert message in texts(at.error)
    assert "data" not in at.session_state


def test_not_a_zip_named_zip_is_a_clear_message():
    at = app()
    at.run()
    at.file_uploader(key="data_zip").set_value(("photos.zip", b"just text", "application/zip")).run()
    assert not at.exception
    assert "not a zip archive" in texts(at.error)


def test_non_image_file_is_listed_as_skipped_with_reason():
    files = {f"{c}/{i}.png": _png(col) for c, col in (("red", (220, 0, 0)), ("blue", (0, 0, 220))) for i in range(4)}
    files["red/notes.txt"] = b"not a picture"
    at = app()
    at.run()
    at.file_uploader(key="data_zip").set_value(("shapes.zip", _zip(files), "application/zip")).run()
    assert not at.exception
    assert "1 file(s) were skipped" in texts(at.warning)
    skipped = at.dataframe[-1].value
    assert skipped["file"].tolist() == ["red/notes.txt"]
    assert "not an image" in skipped["reason"][0]


# -- Base & layers ----------------------------------------------------------------------------------

def test_base_page_offline_imagenet_says_so_and_offers_none(sample):
    at = app(data=sample, config=ExperimentConfig(base="mobilenet", alpha=0.25, image_size=32))
    at.run()
    at.switch_page("pages/2_base.py").run()
    assert not at.exception
    assert "ImageNet weights are not available here" in texts(at.error)
    at.button[0].click().run()  # Train from scratch
    assert not at.exception
    assert at.session_state.config.weights == "none"
    assert at.session_state.config.freeze == "none"
    assert "the base starts with random weights" in texts(at.info)


def test_base_page_layer_table_and_live_counts(sample):
    at = app(data=sample, config=ExperimentConfig(**{**TINY, "freeze": "all"}))
    at.run()
    at.switch_page("pages/2_base.py").run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Head parameters"] == f"{256 * 16 + 16 + 16 * 3 + 3:,}"
    assert metrics["Trainable parameters"] == metrics["Head parameters"]
    table = at.dataframe[0].value
    assert {"name", "type", "output shape", "parameters", "trainable"} <= set(table.columns) or \
        {"name", "type", "output_shape", "params", "trainable"} <= set(table.columns)
    assert not table["trainable"].any()
    at.radio(key="w_lock").set_value("top").run()
    at.number_input(key="w_lock_top").set_value(6).run()
    assert not at.exception
    assert at.session_state.config.freeze == "top:6"
    assert int({m.label: m.value for m in at.metric}["Trainable parameters"].replace(",", "")) > 256 * 16
    assert at.dataframe[0].value["trainable"].any()


def test_text_file_as_weights_is_a_clear_message(sample, tmp_path):
    bogus = tmp_path / "weights.h5"
    bogus.write_text("this is not a weights file")
    at = app(data=sample, config=ExperimentConfig(**TINY), weights_file=str(bogus), w_weights="file")
    at.run()
    at.switch_page("pages/2_base.py").run()
    assert not at.exception
    err = texts(at.error)
    assert "This weights file cannot be used" in err and "Expected an HDF5 weights file" in err and "text" in err


# -- Head & augmentation ----------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [1.0, -0.1])
def test_bad_dropout_is_a_clear_message(sample, rate):
    at = app(data=sample, config=ExperimentConfig(**TINY))
    at.run()
    at.switch_page("pages/3_head.py").run()
    assert not at.exception
    assert "3 units, one per class (circle, square, triangle)" in texts(at.markdown)
    at.number_input(key="w_rate_0").set_value(rate).run()
    assert not at.exception
    assert f"dropout: Expected a rate with 0 <= rate < 1. Received: {rate}" in texts(at.error)
    at.switch_page("pages/4_train.py").run()
    assert not at.exception
    assert at.button(key="train").disabled
    assert "Received: " + str(rate) in texts(at.error)


def test_head_defaults_and_augmentation_preview(sample):
    at = app(data=sample, config=ExperimentConfig(**TINY))
    at.run()
    at.switch_page("pages/3_head.py").run()
    assert at.select_slider(key="w_lr").value == 1e-4 and at.selectbox(key="w_optimizer").value == "rmsprop"
    at.number_input(key="w_n_dense").set_value(2).run()
    at.toggle(key="w_augment").set_value(True).run()
    assert not at.exception
    cfg = at.session_state.config
    assert cfg.dense == [16, 128] and cfg.augment == "default"
    assert "Augmented samples" in texts(at.markdown)


# -- Train, compare, evaluate --------------------------------------------------------------------------

# The Train page's tests: tests/test_page_train.py


def test_compare_page_table_and_bad_rates(sample):
    at = app(data=sample, config=ExperimentConfig(**TINY))
    at.run()
    at.switch_page("pages/5_compare.py").run()
    assert at.text_input(key="w_rates").value == "0, 0.2, 0.5, 0.8"
    assert "Held fixed: base MobileNet, alpha 0.25" in texts(at.caption) and "4 run(s)" in texts(at.caption)
    at.text_input(key="w_rates").set_value("0, 1.0, -0.1").run()
    assert not at.exception
    errors = texts(at.error)
    assert "Expected a rate with 0 <= rate < 1. Received: 1.0" in errors and "Received: -0.1" in errors
    assert "going on with the valid values" in errors and "1 run(s): dropout 0." in texts(at.caption)
    at.text_input(key="w_rates").set_value("abc").run()
    assert at.button(key="compare_btn").disabled and "Received: 'abc'" in texts(at.error)
    at.segmented_control(key="w_setting").set_value("augment").run()
    assert "augment none, augment default" in texts(at.caption) and not at.exception
    at.segmented_control(key="w_setting").set_value("dropout").run()
    at.text_input(key="w_rates").set_value("0, 0.5").run()
    at.number_input(key="w_cmp_epochs").set_value(1).run()
    at.button(key="compare_btn").click().run()
    assert at.session_state.compare.join(240)
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["rate"].tolist() == [0.0, 0.5]
    assert {"best val accuracy", "final train accuracy", "final gap", "epoch of best", "verdict"} <= set(table.columns)
    assert table["final train accuracy"].between(0, 1).all()
    assert "Best: dropout" in texts(at.success)
    assert len(at.get("plotly_chart")) == 4


def test_evaluate_page_confusion_predict_and_downloads(sample, trained):
    at = app(data=sample, config=ExperimentConfig(**TINY), run=trained)
    at.run()
    at.switch_page("pages/6_evaluate.py").run()
    assert not at.exception
    ev = at.session_state.evaluations[(trained.result.run_id, "validation")]
    assert ev.confusion().sum() == len(sample.validation)
    assert at.metric[0].label == "Validation accuracy"
    at.file_uploader(key="predict_files").set_value(
        [("red.png", _png((220, 0, 0)), "image/png"), ("notes.txt", b"hello", "text/plain")]).run()
    assert not at.exception
    assert "notes.txt: not an image" in texts(at.error)
    assert "**red.png** →" in texts(at.markdown)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download model.keras", "Download labels.json", "Download config.json"]


def test_pages_without_data_point_back_to_data():
    for page in ("pages/4_train.py", "pages/5_compare.py", "pages/6_evaluate.py", "pages/2_base.py",
                 "pages/3_head.py"):
        at = app(config=ExperimentConfig(**TINY))
        at.run()
        at.switch_page(page).run()
        assert not at.exception, page
