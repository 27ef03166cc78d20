import numpy as np
import pytest

from core.config import ConfigError
from core.freeze import FreezeSpec, apply_freeze, count_params, layer_table, param_counts
from core.head import head_param_estimate
from core.model import build_model
from tests.conftest import learner_config, tiny_config


def _head_params(built):
    return sum(count_params(layer.weights) for layer in built.head_layers)


def test_lock_all_leaves_only_the_head_trainable():
    built = build_model(tiny_config(freeze="all", dense=[16]), 3)
    counts = param_counts(built.model)
    assert counts["trainable"] == _head_params(built) == 256 * 16 + 16 + 16 * 3 + 3
    assert counts["trainable"] == head_param_estimate(built.feature_shape, tiny_config(dense=[16]), 3)
    assert built.base_frozen
    assert built.model.output_shape == (None, 3)


def test_lock_none_keeps_batchnorm_locked_unless_asked(tiny_weights):
    pretrained = str(tiny_weights["legacy"])
    built = build_model(tiny_config(freeze="none", weights=pretrained), 3)
    bn = [layer for layer in built.base.layers if type(layer).__name__ == "BatchNormalization"]
    assert bn and not any(layer.trainable for layer in bn)
    assert all(layer.trainable for layer in built.base.layers if layer.weights and layer not in bn)
    assert not built.base_frozen
    with_bn = build_model(tiny_config(freeze="none", train_batchnorm=True, weights=pretrained), 3)
    assert param_counts(with_bn.model)["trainable"] > param_counts(built.model)["trainable"]
    # a random base has no statistics to protect: its BatchNorm learns them
    scratch = build_model(tiny_config(freeze="none", weights="none"), 3)
    assert param_counts(scratch.model)["trainable"] == param_counts(with_bn.model)["trainable"]


def test_up_to_a_layer_locks_it_and_everything_below(tiny_weights):
    built = build_model(tiny_config(freeze="up-to:conv_pw_11_relu", weights=str(tiny_weights["legacy"])), 2)
    names = [layer.name for layer in built.base.layers]
    idx = names.index("conv_pw_11_relu")
    below = [layer for layer in built.base.layers[: idx + 1] if layer.weights]
    above = [layer for layer in built.base.layers[idx + 1:] if layer.weights and "bn" not in layer.name]
    assert not any(layer.trainable for layer in below)
    assert above and all(layer.trainable for layer in above)
    rows = layer_table(built.base, "up-to:conv_pw_11_relu")
    assert [r["name"] for r in rows] == names
    assert not any(r["trainable"] for r in rows[: idx + 1])
    assert rows[idx + 1]["block"] == "block_12"


def test_top_n_unlocks_exactly_the_top_layers(tiny_weights):
    built = build_model(tiny_config(freeze="top:3", weights=str(tiny_weights["legacy"])), 2)
    layers = built.base.layers
    assert [layer.trainable for layer in layers[-3:]] == [type(layer).__name__ != "BatchNormalization" for layer in layers[-3:]]
    assert not any(layer.trainable for layer in layers[:-3])


def test_bad_specs_are_refused():
    for text in ("half", "top:x", "up-to:", 3):
        with pytest.raises(ConfigError, match="freeze: Expected"):
            FreezeSpec.parse(text)
    with pytest.raises(ConfigError, match="Did you mean conv_pw_11_relu"):
        build_model(tiny_config(freeze="up-to:conv_pw_11_relo"), 2)
    assert str(FreezeSpec.parse("up-to:mixed7")) == "up-to:mixed7"


def test_flatten_on_a_big_map_is_refused_before_training():
    cfg = tiny_config(base="mobilenet_v2", alpha=1.0, image_size=224, pooling="flatten", dense=[1024])
    with pytest.raises(ConfigError, match="use pooling 'gap'"):
        build_model(cfg, 3)


def test_head_shape_dropout_and_cut():
    cfg = tiny_config(cut="conv_pw_6_relu", dense=[8, 4], dropout=[0.5, 0.1])
    built = build_model(cfg, 5)
    assert built.feature_shape == (2, 2, 128)
    rates = [layer.rate for layer in built.head_layers if type(layer).__name__ == "Dropout"]
    assert rates == [0.5, 0.1]
    out = built.model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_per_layer_unlock_and_table_filter(tiny_weights):
    cfg = tiny_config(freeze="unlock:conv_pw_13,conv_dw_13,conv_pw_13_bn", weights=str(tiny_weights["legacy"]))
    built = build_model(cfg, 2)
    unlocked = sorted(layer.name for layer in built.base.layers if layer.trainable and layer.weights)
    assert unlocked == ["conv_dw_13", "conv_pw_13"]  # BatchNorm stays locked
    assert str(FreezeSpec.parse(cfg.freeze)) == cfg.freeze
    from core.freeze import filter_rows

    rows = layer_table(built.base, cfg.freeze)
    assert {r["name"] for r in filter_rows(rows, "PW_13")} == {"conv_pw_13", "conv_pw_13_bn", "conv_pw_13_relu"}
    assert all(r["type"] == "DepthwiseConv2D" for r in filter_rows(rows, "depthwise"))
    with pytest.raises(ConfigError, match="Did you mean conv_pw_13"):
        FreezeSpec.parse("unlock:conv_pw_13x").locked_mask([r["name"] for r in rows])


def test_one_training_step_changes_exactly_the_trainable_layers(tiny_weights, colour_data_session):
    import keras

    from core.data import load_arrays
    from core.train import compile_model

    # ResNet50: its random features carry signal (a random MobileNet's fade to ~1e-18, so
    # its gradients would be too small to move anything). weights none: the unlocked
    # BatchNorm learns, statistics too; everything else must stay put.
    cfg = learner_config(freeze="top:4", weights="none", lr=0.01)
    keras.utils.set_random_seed(0)
    built = build_model(cfg, 3)
    compile_model(built.model, cfg)
    layers = built.base.layers + built.head_layers
    before = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers if layer.weights}
    x = load_arrays(colour_data_session.train.paths[:16], 32).astype(np.float32)
    built.model.train_on_batch(x, colour_data_session.train.labels[:16])
    changed = {name for name, ws in before.items()
               if any(not np.array_equal(a, np.asarray(b)) for a, b in zip(ws, built.model.get_layer(name).get_weights()
                                                                       if name in [h.name for h in built.head_layers]
                                                                       else built.base.get_layer(name).get_weights()))}
    marked = {layer.name for layer in layers if layer.weights and layer.trainable}
    assert marked == {"conv5_block3_3_conv", "conv5_block3_3_bn", "head_dense_1", "predictions"}
    assert changed == marked  # and no locked layer moved, BatchNorm statistics included


def test_unlocked_batchnorm_on_pretrained_weights_is_warned(tiny_weights):
    built = build_model(tiny_config(freeze="none", train_batchnorm=True, weights=str(tiny_weights["legacy"])), 2)
    assert any("BatchNorm" in w for w in built.warnings(tiny_config(weights=str(tiny_weights["legacy"]))))


def test_the_course_head_on_inception_mixed7_passes_the_flatten_cap():
    from core.config import ExperimentConfig
    from core.head import check_head_size

    # InceptionV3 cut at mixed7 at 150 px gives a 7x7x768 map; Flatten -> Dense 1024 -> 2 classes
    cfg = ExperimentConfig(base="inception_v3", image_size=150, cut="mixed7", pooling="flatten", dense=[1024])
    n = check_head_size((7, 7, 768), cfg, 2)
    assert n == 7 * 7 * 768 * 1024 + 1024 + 1024 * 2 + 2  # about 38.5 M
    with pytest.raises(ConfigError, match="use pooling 'gap'"):
        check_head_size((10, 10, 2048), ExperimentConfig(pooling="flatten", dense=[1024]), 2)


@pytest.mark.slow
def test_inception_cut_at_mixed7_at_150_px_has_the_course_shape():
    cfg = tiny_config(base="inception_v3", image_size=150, cut="mixed7", pooling="flatten", dense=[1024])
    built = build_model(cfg, 2)
    assert built.feature_shape == (7, 7, 768)
    assert param_counts(built.model)["trainable"] == 7 * 7 * 768 * 1024 + 1024 + 1024 * 2 + 2
