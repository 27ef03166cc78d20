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
SLOW_BASES = {"inception_v3", "xception", "densenet121", "vgg16", "efficientnet_b1", "efficientnet_b2",
              "efficientnet_b3", "mobilenet_v3_large"}
CONVS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")


def test_every_base_has_a_preprocessing_family():
    assert set(FAMILY) == set(BASES)


def test_registry_entries_are_complete():
    import keras

    for name, spec in BASES.items():
        assert callable(getattr(keras.applications, spec.builder)), name
        assert 32 <= spec.min_size <= spec.default_size <= 300
        assert spec.preprocess in ("tf", "caffe", "torch", "none") and spec.preprocess_text
        assert all(spec.min_size <= s for s in spec.imagenet_sizes)
        assert f"from {spec.min_size} px" in spec.sizes_text()
    assert BASES["mobilenet"].alphas == (0.25, 0.5, 0.75, 1.0)
    assert BASES["mobilenet_v2"].alphas == (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
    assert BASES["inception_v3"].min_size == 75 and BASES["inception_v3"].default_size == 299
    assert {n: BASES[n].preprocess for n in ("mobilenet", "resnet50", "vgg16", "densenet121", "efficientnet_b0")} == \
        {"mobilenet": "tf", "resnet50": "caffe", "vgg16": "caffe", "densenet121": "torch", "efficientnet_b0": "none"}


def _first_conv_input(base, x):
    """The tensor that reaches the base's first convolution when ``x`` goes in."""
    import keras

    conv = next(layer for layer in base.layers if type(layer).__name__ in CONVS)
    return np.asarray(keras.Model(base.input, conv.input)(x))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_BASES else n for n in sorted(BASES)])
def test_tensor_reaching_the_first_convolution_equals_keras_preprocess_input(name):
    import keras

    from core.model import build_model

    spec = BASES[name]
    size = spec.min_size
    alpha = spec.alphas[0] if spec.alphas else 1.0
    built = build_model(tiny_config(base=name, alpha=alpha, image_size=size), 3)
    # The model is raw RGB -> [preprocessing layer] -> base -> head, nothing else before the base:
    assert built.model.layers[1 if built.preprocess is None else 2] is built.base
    assert built.model.input.shape[1:] == (size, size, 3)
    assert not any(type(layer).__name__ == "Lambda" for layer in built.model.layers)
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    pre = np.asarray(built.preprocess(x)) if built.preprocess is not None else x
    got = _first_conv_input(built.base, pre)
    # Keras' own base fed keras.applications.<family>.preprocess_input(x):
    reference = getattr(keras.applications, spec.builder)(
        include_top=False, weights=None, input_shape=(size, size, 3), **spec.builder_kwargs(alpha))
    want = _first_conv_input(reference, getattr(keras.applications, FAMILY[name]).preprocess_input(x.copy()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert np.abs(got).max() < (152 if spec.preprocess == "caffe" else 2.7)  # never raw 0-255 pixels


def test_auto_named_layers_have_the_same_names_in_every_build():
    first = build_base("mobilenet_v3_small", 32, 0.75, "none")
    again = build_base("mobilenet_v3_small", 32, 0.75, "none")
    names = [layer.name for layer in first.layers]
    assert names == [layer.name for layer in again.layers]
    assert names[:3] == ["input_layer", "rescaling", "conv"] and names[-1] == "activation_17"
    assert len(set(names)) == len(names)


def test_suggested_cut_points_with_their_output_shapes():
    v2 = dict(suggested_cuts(build_base("mobilenet_v2", 96, 0.35, "none"), "mobilenet_v2"))
    assert list(v2) == [f"block_{i}_add" for i in (2, 4, 5, 7, 8, 9, 11, 12, 14, 15)] + ["out_relu"]
    assert v2["block_2_add"][1:3] == (24, 24) and v2["out_relu"] == (None, 3, 3, 1280)
    resnet = dict(suggested_cuts(build_base("resnet50", 64, 1.0, "none"), "resnet50"))
    assert list(resnet) == [f"conv{c}_block{b}_out" for c, n in ((2, 3), (3, 4), (4, 6), (5, 3)) for b in range(1, n + 1)]
    assert resnet["conv4_block6_out"] == (None, 4, 4, 1024) and resnet["conv5_block3_out"] == (None, 2, 2, 2048)


def test_every_image_shaped_layer_is_a_cut_choice_suggested_first():
    from core.bases import cut_choices

    base = build_base("mobilenet", 32, 0.25, "none")
    choices = cut_choices(base, "mobilenet")
    suggested = [c for c in choices if c[2]]
    assert [c[0] for c in suggested] == [f"conv_pw_{i}_relu" for i in range(1, 14)]
    assert choices[: len(suggested)] == suggested
    assert len(choices) == len(base.layers) - 1  # every layer but the input
    cut = cut_base(base, "conv_dw_5_bn")  # not a suggested one
    assert tuple(cut.output.shape[1:]) == dict((c[0], c[1]) for c in choices)["conv_dw_5_bn"]


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
    with pytest.raises(WeightsError, match="Could not download the ImageNet weights for MobileNetV2.*weights none to train from scratch"):
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


def test_wrong_files_say_which_architecture_or_alpha_they_hold(tiny_weights, tmp_path):
    import keras

    # the alpha 0.25 files for an alpha 0.5 base: both layouts name the alpha found
    for kind in ("legacy", "keras3"):
        with pytest.raises(WeightsError, match=r"Expected weights for MobileNet \(alpha 0.5\).* holds MobileNet "
                                               r"weights for alpha 0.25"):
            build_base("mobilenet", 32, 0.5, str(tiny_weights[kind]))
    # a MobileNet file for a MobileNetV2 base: its layer names say whose it is
    with pytest.raises(WeightsError, match=r"Expected weights for MobileNetV2 \(alpha 0.35\).*layer names are "
                                           r"MobileNet's \(conv1, conv1_bn, conv_dw_1"):
        build_base("mobilenet_v2", 32, 0.35, str(tiny_weights["legacy"]))
    # a Keras 3 file saved from a model with its classification top
    full = keras.applications.MobileNet(alpha=0.25, input_shape=(32, 32, 3), weights=None, classes=3)
    top = tmp_path / "mobilenet_top.weights.h5"
    full.save_weights(top)
    with pytest.raises(WeightsError, match=r"Expected a no-top weights file .* holds layers the no-top base lacks "
                                           r"\(.*dropout.*\): it seems to include the classification top"):
        build_base("mobilenet", 32, 0.25, str(top))


def test_a_cached_base_is_never_changed_by_building_or_training(tiny_weights, colour_data_session):
    from core.freeze import param_counts
    from core.train import train

    cached = build_base("mobilenet", 32, 0.25, str(tiny_weights["keras3"]))  # as the app would cache it
    names = [layer.name for layer in cached.layers]
    flags = [layer.trainable for layer in cached.layers]
    cfg = tiny_config(weights=str(tiny_weights["keras3"]), freeze="top:5", cut="conv_pw_12_relu",
                      train_batchnorm=True, epochs=1, lr=0.05)
    result = train(cfg, colour_data_session, base=cached)
    trained = next(layer for layer in result.model.layers if hasattr(layer, "layers"))
    assert trained is not cached and trained.layers[-1].name == "conv_pw_12_relu"
    assert param_counts(result.model)["trainable"] > 0
    moved = [a for a, b in zip(trained.get_weights(), cached.get_weights()) if not np.array_equal(a, b)]
    assert moved  # the run's own copy trained …
    for got, want in zip(cached.get_weights(), tiny_weights["weights"]):  # … the cached base did not
        np.testing.assert_array_equal(got, want)
    assert [layer.name for layer in cached.layers] == names
    assert [layer.trainable for layer in cached.layers] == flags and cached.trainable
    assert [layer.momentum for layer in cached.layers if hasattr(layer, "momentum")][0] == 0.99


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BASES))
def test_every_suggested_cut_of_every_base_cuts_to_its_listed_shape(name):
    spec = BASES[name]
    base = build_base(name, spec.min_size, spec.alphas[0] if spec.alphas else 1.0, "none")
    cuts = suggested_cuts(base, name)
    assert len(cuts) >= 4
    assert cuts[-1][0] == base.layers[-1].name
    for cut, shape in cuts:
        assert tuple(cut_base(base, cut).output.shape) == shape and len(shape) == 4


def test_a_keras_message_ending_in_a_colon_keeps_its_next_line():
    from core.bases import _first_line

    e = ValueError("Layer count mismatch when loading weights from file:\n  Model expected 52 layers, found 3.\n"
                   "  more detail")
    assert _first_line(e) == ("Layer count mismatch when loading weights from file: "
                              "Model expected 52 layers, found 3.")
    assert _first_line(ValueError("")) == "ValueError"
    long = _first_line(ValueError("x" * 400))
    assert len(long) == 300 and long.endswith("…")


def test_pages_name_a_base_as_its_family_does():
    from core.bases import base_label
    from core.config import ExperimentConfig

    assert base_label(ExperimentConfig(base="mobilenet_v2", alpha=0.35, image_size=160)) == "MobileNetV2, alpha 0.35, 160 px"
    assert base_label(ExperimentConfig(base="inception_v3")) == "InceptionV3, 299 px"  # its default size, no alpha
