"""core.evaluate: confusion matrix, per-class metrics, evaluating and predicting."""
import io

import numpy as np
import pytest
from PIL import Image

from core.evaluate import Evaluation, confusion_matrix, evaluate_model, per_class_metrics, predict_uploads


def test_confusion_matrix_counts_true_by_predicted():
    cm = confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_confusion_matrix_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="Expected as many predictions as labels"):
        confusion_matrix([0, 1], [0], 2)


def test_per_class_metrics():
    df = per_class_metrics(np.array([[3, 1], [0, 4]]), ["cat", "dog"])
    assert df["class"].tolist() == ["cat", "dog"]
    assert df["precision"].tolist() == pytest.approx([1.0, 0.8])
    assert df["recall"].tolist() == pytest.approx([0.75, 1.0])
    assert df["support"].tolist() == [4, 4]
    # a class never predicted has precision 0, not NaN
    empty = per_class_metrics(np.array([[2, 0], [2, 0]]), ["a", "b"])
    assert empty["precision"].tolist() == pytest.approx([0.5, 0.0])


def test_evaluation_accuracy_and_mistakes():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]])
    ev = Evaluation("validation", ["a", "b"], ["x.png", "y.png", "z.png"], np.array([0, 1, 1]), probs)
    assert ev.accuracy == pytest.approx(2 / 3)
    assert ev.confusion().tolist() == [[1, 0], [1, 1]]
    m = ev.mistakes()
    assert m.to_dict("records") == [{"file": "z.png", "true": "b", "predicted": "a", "probability": 0.8}]
    assert ev.confusion_frame().loc["b", "a"] == 1


class _Constant:
    """A stand-in model: fixed input size, always the same probabilities."""

    input_shape = (None, 32, 32, 3)
    output_shape = (None, 2)

    def predict_on_batch(self, x):
        assert x.dtype == np.float32 and x.shape[1:] == (32, 32, 3)
        return np.tile([[0.25, 0.75]], (len(x), 1))


def _png(colour=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, "PNG")
    return buf.getvalue()


def test_predict_uploads_reports_non_images_by_name():
    rows, failures = predict_uploads(_Constant(), ["cat", "dog"], [("a.png", _png()), ("notes.txt", b"hello")], top=2)
    assert [(r["file"], r["rank"], r["class"]) for r in rows] == [("a.png", 1, "dog"), ("a.png", 2, "cat")]
    assert rows[0]["probability"] == pytest.approx(0.75)
    assert failures and failures[0][0] == "notes.txt" and "not an image" in failures[0][1]


def test_evaluate_model_on_a_dataset(tmp_path):
    from core.data import ImageDataset

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        p.write_bytes(_png())
        paths.append(str(p))
    ds = ImageDataset(paths, np.array([1, 1, 0], np.int32), ["cat", "dog"])
    ev = evaluate_model(_Constant(), ds, ["cat", "dog"])
    assert ev.y_pred.tolist() == [1, 1, 1]
    assert ev.accuracy == pytest.approx(2 / 3)
    assert ev.per_class()["support"].tolist() == [1, 2]


def test_confusion_frame_row_normalised():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    ev = Evaluation("test", ["a", "b"], list("wxyz"), np.array([0, 1, 1, 1]), probs)
    norm = ev.confusion_frame(normalize=True)
    np.testing.assert_allclose(norm.to_numpy(), [[1.0, 0.0], [2 / 3, 1 / 3]])
    assert ev.mistakes()["file"].tolist() == ["z", "y"]  # most confident mistake first
    d = ev.to_dict()
    assert d["split"] == "test" and d["images"] == 4 and d["confusion"] == [[1, 0], [2, 1]]
    assert [r["support"] for r in d["per_class"]] == [1, 3]
    assert ev.table_text().splitlines()[-1].split() == ["accuracy", "0.500", "4"]


def test_evaluation_split_prefers_test():
    from types import SimpleNamespace

    from core.evaluate import evaluation_split

    val, test = object(), [1]
    assert evaluation_split(SimpleNamespace(validation=val, test=None)) == ("validation", val)
    assert evaluation_split(SimpleNamespace(validation=val, test=test)) == ("test", test)


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("L", "PNG"), ("P", "GIF"), ("I;16", "PNG"), ("CMYK", "JPEG"),
                                      ("RGB", "BMP"), ("RGB", "WEBP"), ("RGB", "TIFF"), ("LA", "PNG"), ("1", "PNG")])
def test_predict_accepts_every_mode_and_format_the_data_page_does(mode, fmt):
    from core.predict import predict_files, predictions_csv

    buf = io.BytesIO()
    Image.new(mode, (50, 30)).save(buf, fmt)
    preds, failures = predict_files(_Constant(), ["cat", "dog"], [buf.getvalue()], top=2, names=[f"x.{fmt.lower()}"])
    assert not failures and preds[0].top[0] == ("dog", 0.75) and preds[0].image.shape == (32, 32, 3)
    assert predictions_csv(preds).splitlines() == ["path,class,probability", f"x.{fmt.lower()},dog,0.750000",
                                                   f"x.{fmt.lower()},cat,0.250000"]


# -- a real binary model: evaluation and Grad-CAM ---------------------------------------------------------

def _corner_images(root, per_class=12, size=32, seed=0):
    """Two classes that differ only in the colour of a patch in the top-left corner."""
    rng = np.random.default_rng(seed)
    for name, colour in (("blue", (40, 60, 220)), ("red", (220, 40, 40))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.full((size, size, 3), 128.0) + rng.normal(0, 10, (size, size, 3))
            arr[2:12, 2:12] = np.asarray(colour) + rng.normal(0, 10, (10, 10, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / name / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory):
    from core.data import load_dataset
    from core.train import train
    from tests.conftest import learner_config

    data = load_dataset(_corner_images(tmp_path_factory.mktemp("corner")), val_split=0.25, seed=0)
    result = train(learner_config(cut="conv2_block3_out", dense=[16], epochs=8, batch_size=16), data)
    return data, result


def test_binary_evaluation_of_a_trained_model(corner_run):
    data, result = corner_run
    ev = evaluate_model(result.model, data.validation, result.class_names, keep_images=True)
    assert ev.class_names == ["blue", "red"] and ev.probs.shape == (6, 2)
    assert ev.accuracy == 1.0 and ev.confusion().tolist() == [[3, 0], [0, 3]]
    assert ev.per_class()["f1"].tolist() == [1.0, 1.0] and ev.mistakes().empty
    assert ev.images.shape == (6, 32, 32, 3) and ev.images.dtype == np.uint8


def test_gradcam_looks_at_the_corner_holding_the_evidence(corner_run):
    from core.data import load_arrays
    from core.gradcam import GradCam, overlay

    data, result = corner_run
    x = load_arrays(data.validation.paths, 32)
    cam = GradCam(result.model)
    assert cam.target.shape == (8, 8, 256) and cam.target.name == "resnet50_to_conv2_block3_out"
    heat, probs = cam.heatmaps(x)
    assert heat.shape == (6, 8, 8) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and np.allclose(heat.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(probs, result.model.predict_on_batch(x.astype(np.float32)), atol=1e-5)
    # the class evidence fills the top-left quarter; most of every map's mass is there
    share = heat[:, :4, :4].sum(axis=(1, 2)) / heat.sum(axis=(1, 2))
    assert share.min() > 0.5, share
    img = overlay(x[0], heat[0])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8


def test_gradcam_says_why_when_there_is_no_map():
    import keras

    from core.gradcam import GradCamUnavailable, find_target, gradcam_or_reason

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Flatten()(x)
    dense_only = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x))
    with pytest.raises(GradCamUnavailable, match="no convolutional feature map"):
        find_target(dense_only)
    x = keras.layers.Conv2D(4, 3, strides=32, padding="same")(inp)  # a 1x1 map
    tiny = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x)))
    cam, reason = gradcam_or_reason(tiny)
    assert cam is None and "1×1" in reason


def test_gradcam_on_a_flat_functional_model():
    """An uploaded model need not nest its base: the map is reached through a sub-model."""
    import keras

    from core.gradcam import GradCam

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(a)
    x = keras.layers.Add(name="skip")([a, b])  # not a chain of single-input layers
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    cam = GradCam(model)
    heat, probs = cam.heatmaps(np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)))
    assert cam.target.name == "skip" and cam._mode == "flat"
    assert heat.shape == (2, 16, 16) and 0 <= heat.min() and heat.max() <= 1
    assert probs.shape == (2, 3)
