import numpy as np
import pytest

from core.bases import BASES, WeightsError, build_base, cut_base, suggested_cuts
from core.config import ConfigError
from tests.conftest import tiny_config

FAMILY = {"mobilenet": "mobilenet", "mobilenet_v2": "mobilenet_v2", "inception_v3": "inception_v3",
          "efficientnet_b0": "efficientnet", "efficientnet_b1": "efficientnet", "efficientnet_b2": "efficientnet",
          "efficientnet_b3": "efficientnet", "resnet50": "resnet50", "resnet50_v2": "resnet_v2",
          "densenet121": "densenet", "mobilenet_v3_small": "mobilenet_v3", "mobilenet_v3_large": "mobilenet_v3",
          "vgg16": "vgg16", "xception": "xception"}
SLOW_BASES = {"inception_v3", "xception", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "mobilenet_v3_large"}


def test_every_base_has_a_preprocessing_family():
    assert set(FAMILY) == set(BASES)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BASES else n for n in sorted(BASES)])
def test_tensor_reaching_the_base_equals_keras_preprocess_input(name):
    import keras

    from core.model import build_model

    spec = BASES[name]
    size = max(spec.min_size, 32)
    cfg = tiny_config(base=name, alpha=1.0 if not spec.alphas else spec.alphas[-1], image_size=size)
    built = build_model(cfg, 3)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    # What the nested base receives inside the whole model:
    reaching = built.preprocess.output if built.preprocess is not None else built.model.input
    got = np.asarray(keras.Model(built.model.input, reaching)(x))
    assert built.model.layers[1 if built.preprocess is None else 2] is built.base
    want = getattr(keras.applications, FAMILY[name]).preprocess_input(x.copy())
    np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-4)
    assert built.model.input.shape[1:] == (size, size, 3)
    assert not any(type(layer).__name__ == "Lambda" for layer in built.model.layers)


def test_legacy_h5_and_keras3_weight_files_load(tiny_weights):
    for kind in ("legacy", "keras3"):
        base = build_base("mobilenet", 32, 0.25, str(tiny_weights[kind]))
        for got, want in zip(base.get_weights(), tiny_weights["weights"]):
            np.testing.assert_array_equal(got, want)


def test_weight_file_renamed_by_an_upload_still_loads(tiny_weights, tmp_path):
    renamed = tmp_path / "upload_1234"
    renamed.write_bytes(tiny_weights["keras3"].read_bytes())
    base = build_base("mobilenet", 32, 0.25, str(renamed))
    np.testing.assert_array_equal(base.get_weights()[0], tiny_weights["weights"][0])


def test_wrong_weight_files_say_what_was_expected_and_found(tiny_weights, tmp_path):
    text = tmp_path / "weights.h5"
    text.write_text("I am not weights")
    with pytest.raises(WeightsError, match="Expected an HDF5 weights file .* which is text, not HDF5"):
        build_base("mobilenet", 32, 0.25, str(text))
    with pytest.raises(WeightsError, match=r"Expected weights for MobileNet \(alpha 0.5\)"):
        build_base("mobilenet", 32, 0.5, str(tiny_weights["legacy"]))
    with pytest.raises(WeightsError, match="Expected weights for MobileNetV2"):
        build_base("mobilenet_v2", 32, 0.35, str(tiny_weights["legacy"]))


def test_a_file_with_the_classification_top_is_refused(tmp_path):
    import keras

    full = keras.applications.MobileNet(alpha=0.25, input_shape=(128, 128, 3), weights=None, classes=4)
    path = tmp_path / "mobilenet_with_top.h5"
    full.save(path)
    with pytest.raises(WeightsError, match="Expected a no-top weights file .* includes the classification top"):
        build_base("mobilenet", 128, 0.25, str(path))


def test_imagenet_offline_is_a_clear_error_not_a_fallback(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://example.invalid: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(WeightsError, match="could not download the ImageNet weights for MobileNetV2.*--weights none"):
        build_base("mobilenet_v2", 96, 0.35, "imagenet")


def test_cut_points_and_cutting_inside_the_base():
    base = build_base("inception_v3", 75, 1.0, "none")
    cuts = [n for n, _ in suggested_cuts(base, "inception_v3")]
    assert cuts == [f"mixed{i}" for i in range(11)]
    cut = cut_base(base, "mixed7")
    assert cut.output.shape[1:] == base.get_layer("mixed7").output.shape[1:]
    assert cut.layers[-1].name == "mixed7"
    with pytest.raises(ConfigError, match="Did you mean mixed7"):
        cut_base(base, "mixd7")


@pytest.mark.parametrize("layout", ["legacy", "keras3"])
def test_efficientnet_imagenet_weights_from_a_file_match_keras_imagenet_build(tmp_path, monkeypatch, layout):
    import keras
    from keras.src.utils import file_utils

    from core.bases import IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB

    src = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3))
    norm = next(layer for layer in src.layers if type(layer).__name__ == "Normalization")
    norm.adapt_mean.assign(IMAGENET_MEAN_RGB)  # what ImageNet EfficientNet files hold
    norm.adapt_variance.assign([s ** 2 for s in IMAGENET_STDDEV_RGB])
    path = tmp_path / ("efficientnetb0_notop.h5" if layout == "legacy" else "effnet.weights.h5")
    src.save(path) if layout == "legacy" else src.save_weights(path)
    # Keras' own imagenet build, fed our file instead of a download:
    monkeypatch.setattr(file_utils, "get_file", lambda *a, **k: str(path))
    reference = keras.applications.EfficientNetB0(include_top=False, weights="imagenet", input_shape=(32, 32, 3))
    ours = build_base("efficientnet_b0", 32, 1.0, str(path))
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    # Compare at the first convolution: a random base's final features are too small to tell.
    stem = lambda m: np.asarray(keras.Model(m.input, m.get_layer("stem_conv").output)(x))
    want = stem(reference)
    assert np.abs(want).mean() > 0.1
    np.testing.assert_allclose(stem(ours), want, rtol=1e-4, atol=1e-4)
