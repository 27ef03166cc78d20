"""The Evaluate & export page through AppTest: a run trained here, a run reopened from its folder,
an uploaded .keras file (and a refused one), the mistakes gallery with Grad-CAM, predictions, exports.

One trained run for the module: ResNet50 cut at conv2_block3_out on the built-in sample at 32 px
(random weights, locked), so Grad-CAM has an 8x8 map and TFLite conversion is quick.
"""
import copy
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.conftest import learner_config

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
PAGE = "pages/6_evaluate.py"


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def open_page(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _png(colour, size=(40, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from core.data import load_dataset, make_sample_dataset
    from core.train import train

    tmp = tmp_path_factory.mktemp("page_eval")
    data = load_dataset(make_sample_dataset(tmp / "sample", per_class=12, size=32), val_split=0.25, test_split=0.25)
    result = train(learner_config(cut="conv2_block3_out", dense=[16], epochs=6, batch_size=16), data,
                   run_dir=tmp / "run")
    return SimpleNamespace(data=data, result=result, handle=SimpleNamespace(result=result), tmp=tmp)


def test_scores_the_test_split_with_confusion_and_per_class_table(trained):
    at = open_page(data=trained.data, run=trained.handle)
    assert at.radio(key="w_eval_split").options == ["test", "validation"]
    assert at.radio(key="w_eval_split").value == "test"
    assert "held-out **test** split (9 images)" in texts(at.caption)
    ev = at.session_state.evaluations[(trained.result.run_id, "test")]
    assert ev.confusion().sum() == 9 == len(trained.data.test)
    assert [m.label for m in at.metric] == ["Test accuracy", "Images", "Mistakes"]
    assert at.metric[0].value == f"{ev.accuracy:.1%}"
    table = at.dataframe[0].value
    assert table["class"].tolist() == ["circle", "square", "triangle"] and table["support"].sum() == 9
    at.toggle(key="w_cm_norm").set_value(True).run()
    assert not at.exception
    at.radio(key="w_eval_split").set_value("validation").run()
    assert "Scored on the **validation** split" in texts(at.caption)
    assert (trained.result.run_id, "validation") in at.session_state.evaluations


def test_mistakes_gallery_with_gradcam(trained):
    from core.evaluate import evaluate_model

    # the same images, each labelled with a class the model does not predict: all are mistakes
    pred = evaluate_model(trained.result.model, trained.data.test, trained.result.class_names).y_pred
    data = copy.copy(trained.data)
    data.test = copy.copy(trained.data.test)
    data.test.labels = ((pred + 1) % 3).astype(np.int32)
    at = open_page(data=data, run=SimpleNamespace(result=SimpleNamespace(**{**vars(trained.result), "data": data})))
    assert at.metric[2].value == "9"
    assert "9 mistake(s); the 8 the model was surest about" in texts(at.caption)
    assert sum("· predicted **" in m.value for m in at.markdown) == 8
    assert "Grad-CAM not available" not in texts(at.caption)
    assert len(at.get("image")) >= 8


def test_predict_uploads_camera_and_dataset_pick(trained):
    at = open_page(data=trained.data, run=trained.handle)
    at.file_uploader(key="predict_files").set_value([
        ("red.png", _png((220, 40, 40)), "image/png"), ("blue.png", _png((40, 60, 220)), "image/png"),
        ("notes.txt", b"hello", "text/plain")]).run()
    assert not at.exception
    assert "notes.txt: not an image" in texts(at.error)
    md = texts(at.markdown)
    assert "**red.png** →" in md and "**blue.png** →" in md
    assert "Download predictions.csv (2 images)" in [b.label for b in at.get("download_button")]
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (40, 60, 220)).save(buf, "JPEG")
    at.camera_input(key="predict_camera").set_value(("photo.jpg", buf.getvalue(), "image/jpeg")).run()
    assert not at.exception, at.exception
    assert "**camera photo** →" in texts(at.markdown)
    at.selectbox(key="predict_pick").set_value(0).run()
    assert not at.exception
    first = Path(trained.data.test.paths[0]).name
    assert f"**{first}** →" in texts(at.markdown)


def test_export_writes_tflite_script_and_zip_into_the_run_folder(trained):
    at = open_page(data=trained.data, run=trained.handle)
    assert [b.label for b in at.get("download_button")] == [
        "Download model.keras", "Download labels.json", "Download config.json"]
    at.button(key="export_btn").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    assert table["file"].tolist() == ["model.keras", "labels.json", "config.json", "run.json", "model.tflite",
                                      "train.py"]
    assert "same top class 100%" in table.loc[4, "what"]
    labels = [b.label for b in at.get("download_button")]
    assert "Download all (zip)" in labels and any(lb.startswith("Download model.tflite (") for lb in labels)
    run_dir = Path(trained.result.run_dir)
    assert (run_dir / "model.tflite").is_file() and (run_dir / "train.py").is_file()


def test_a_run_reopened_from_its_folder(trained):
    from core.export import load_model

    r = trained.result
    model, names = load_model(Path(r.run_dir) / "model.keras")
    reopened = SimpleNamespace(model=model, class_names=names, config=r.config, run_id=r.run_id + "-again",
                               run_dir=r.run_dir, data=r.data, best_val_accuracy=r.best_val_accuracy,
                               best_epoch=r.best_epoch)
    at = open_page(run=SimpleNamespace(result=reopened))
    ev = at.session_state.evaluations[(r.run_id + "-again", "test")]
    direct = at.session_state.evaluations  # the reloaded model scores as the trained one does
    np.testing.assert_allclose(ev.probs, r.model.predict_on_batch(
        np.stack([np.asarray(Image.open(p).convert("RGB")) for p in r.data.test.paths]).astype(np.float32)),
        atol=1e-4)
    assert direct and "Grad-CAM not available" not in texts(at.caption)


def test_an_uploaded_keras_file_and_a_refused_one(trained, tmp_path):
    import keras

    at = open_page(data=trained.data, run=trained.handle)
    at.radio(key="w_model_source").set_value("A .keras file").run()
    blob = (Path(trained.result.run_dir) / "model.keras").read_bytes()
    at.file_uploader(key="model_upload").set_value([("mine.keras", blob, "application/zip")]).run()
    assert not at.exception, at.exception
    assert "Uploaded model **mine.keras**" in texts(at.caption)
    assert at.metric[0].label == "Test accuracy"
    assert "An uploaded model may have trained on some of these images" in texts(at.caption)
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Download model.keras", "Download labels.json"]  # no config.json for a bare model file

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inp)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inp, out).save(tmp_path / "lambda.keras")
    at.file_uploader(key="model_upload").set_value(
        [("lambda.keras", (tmp_path / "lambda.keras").read_bytes(), "application/zip")]).run()
    assert not at.exception
    assert "carries Python code (a Lambda layer); refused in safe mode, never executed" in texts(at.error)


def test_without_a_model_the_page_points_to_train_and_offers_an_upload():
    at = open_page()
    assert "No trained model yet" in texts(at.info)
    assert at.file_uploader(key="model_upload") is not None
