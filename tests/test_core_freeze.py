import numpy as np
import pytest

from core.config import ConfigError
from core.freeze import (FreezeSpec, apply_freeze, count_params, layer_rows, layer_table, lock_param_counts,
                         param_counts)
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


def _weights_of(layers):
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in layers if layer.weights}


def test_one_training_step_changes_exactly_the_trainable_layers(colour_data_session):
    import keras

    from core.data import load_arrays
    from core.freeze import batchnorm_trains
    from core.train import compile_model

    # ResNet50: its random features carry signal (a random MobileNet's fade to ~1e-18, so
    # its gradients would be too small to move anything). weights none: the unlocked
    # BatchNorm learns, statistics too; everything else must stay put. One model, locked
    # three ways in turn and recompiled after each change, as core.train does.
    cfg = learner_config(freeze="top:4", weights="none", lr=0.01)
    keras.utils.set_random_seed(0)
    built = build_model(cfg, 3)
    layers = built.base.layers + built.head_layers
    x = load_arrays(colour_data_session.train.paths[:16], 32).astype(np.float32)
    y = colour_data_session.train.labels[:16]
    head = {"head_dense_1", "predictions"}
    for freeze, unlocked in [
        ("top:4", {"conv5_block3_3_conv", "conv5_block3_3_bn"}),
        ("up-to:conv5_block3_2_relu", {"conv5_block3_3_conv", "conv5_block3_3_bn"}),
        ("unlock:conv5_block3_2_conv,conv5_block2_3_conv", {"conv5_block3_2_conv", "conv5_block2_3_conv"}),
    ]:
        apply_freeze(built.base, freeze, batchnorm_trains(cfg))
        compile_model(built.model, cfg)  # after every change to trainable
        built.model.run_eagerly = True  # one step: tracing a graph would cost more than it saves
        before = _weights_of(layers)
        built.model.train_on_batch(x, y)
        after = _weights_of(layers)
        changed = {name for name, ws in before.items()
                   if any(not np.array_equal(a, b) for a, b in zip(ws, after[name]))}
        marked = {layer.name for layer in layers if layer.weights and layer.trainable}
        assert marked == unlocked | head, freeze
        assert changed == marked, freeze  # and no locked layer moved, BatchNorm statistics included


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


def test_per_layer_choices_become_a_spec_that_round_trips_through_json_and_the_cli(tiny_weights):
    from core.cli import _parser, config_from_args
    from core.config import ExperimentConfig
    from core.freeze import lockable_names

    names = ["conv1", "conv_dw_1", "conv_pw_1", "conv_dw_2", "conv_pw_2"]
    assert str(FreezeSpec.from_unlocked(names, [])) == "all"
    assert str(FreezeSpec.from_unlocked(names, names)) == "none"
    assert str(FreezeSpec.from_unlocked(names, {"conv_dw_2", "conv_pw_2"})) == "up-to:conv_pw_1"
    spec = FreezeSpec.from_unlocked(names, {"conv_pw_2", "conv1"})
    assert str(spec) == "unlock:conv1,conv_pw_2"  # in base order
    assert spec.locked_mask(names) == [False, True, True, True, False]
    assert spec.describe() == "2 layers unlocked by hand (conv1, conv_pw_2), the rest locked"
    assert FreezeSpec.parse("top:3").describe() == "all but the top 3 layers locked"
    # the lockable layers of a base: weighted, up to the cut, BatchNorm only when it may train
    cfg = tiny_config(weights=str(tiny_weights["legacy"]), cut="conv_pw_2_relu")
    base = build_model(cfg, 2).base
    assert lockable_names(base, cfg) == names
    picked = str(FreezeSpec.from_unlocked(names, {"conv1", "conv_pw_2"}))
    cfg = ExperimentConfig.from_json(tiny_config(freeze=picked, weights=str(tiny_weights["legacy"])).to_json())
    assert cfg.freeze == picked
    args = _parser().parse_args(["train", "--data", "d", "--out", "o", "--base", "mobilenet", "--alpha", "0.25",
                                 "--image-size", "32", "--weights", str(tiny_weights["legacy"]), "--freeze", picked])
    assert config_from_args(args).freeze == picked
    built = build_model(cfg, 2)
    assert sorted(layer.name for layer in built.base.layers if layer.trainable and layer.weights) == ["conv1", "conv_pw_2"]


def test_live_counts_and_table_match_the_built_model(tiny_weights):
    w = str(tiny_weights["legacy"])
    for freeze, bn in [("all", False), ("top:7", False), ("up-to:conv_pw_10_relu", True),
                       ("unlock:conv1,conv_pw_12", False), ("none", False)]:
        cfg = tiny_config(weights=w, freeze=freeze, train_batchnorm=bn, cut="conv_pw_12_relu")
        from core.bases import build_base

        plain = build_base("mobilenet", 32, 0.25, "none")  # never locked: the page's cached architecture
        counts = lock_param_counts(plain, cfg, 3)
        built = build_model(cfg, 3)
        assert {k: counts[k] for k in ("trainable", "locked")} == \
            {k: param_counts(built.model)[k] for k in ("trainable", "locked")}, freeze
        rows = layer_rows(plain, cfg)
        kept = {r["name"]: r["trainable"] for r in rows if r["state"] != "cut off"}
        assert kept == {layer.name: bool(layer.trainable and layer.weights) for layer in built.base.layers}, freeze
        assert [r["name"] for r in rows if r["state"] == "cut off"] == ["conv_dw_13", "conv_dw_13_bn", "conv_dw_13_relu",
                                                                         "conv_pw_13", "conv_pw_13_bn", "conv_pw_13_relu"]
        assert all(layer.trainable for layer in plain.layers)


def test_nested_models_are_listed_layer_by_layer_with_a_path():
    built = build_model(tiny_config(freeze="top:3", cut="conv_pw_2_relu"), 2)
    rows = layer_table(built.model)
    base = built.base.name
    names = [r["name"] for r in rows]
    assert names[:3] == ["image", "preprocess_tf", f"{base}/conv1"]
    assert names[-4:] == ["head_pool", "head_dense_1", "head_dropout_1", "predictions"]
    assert len(rows) == 2 + (len(built.base.layers) - 1) + 4
    by = {r["name"]: r for r in rows}
    assert by[f"{base}/conv_pw_2"]["trainable"] and by[f"{base}/conv_pw_2"]["block"] == "block_2"
    assert not by[f"{base}/conv1"]["trainable"] and by[f"{base}/conv1"]["params"] == 3 * 3 * 3 * 8
    assert by[f"{base}/conv_pw_2"]["output_shape"] == "(None, 8, 8, 32)"
    assert [r["index"] for r in rows] == list(range(len(rows)))
    from core.freeze import filter_rows

    assert [r["name"] for r in filter_rows(rows, "", types=("Dense",))] == ["head_dense_1", "predictions"]
    assert [r["name"] for r in filter_rows(rows, "pw_2", types=("Conv2D",))] == [f"{base}/conv_pw_2"]


def test_flatten_head_memory_is_shown_before_training_and_capped():
    from core.config import ExperimentConfig
    from core.head import check_head_size, head_plan

    course = ExperimentConfig(base="inception_v3", image_size=150, cut="mixed7", pooling="flatten", dense=[1024])
    plan = head_plan((7, 7, 768), course, 2)
    assert plan["params"] == 38_538_242 and plan["inputs"] == 37_632 and not plan["over_cap"]
    assert plan["weights_bytes"] == 4 * 38_538_242
    assert plan["training_bytes"] == 4 * 38_538_242 * 2  # RMSprop keeps one slot per weight
    adam = head_plan((7, 7, 768), ExperimentConfig(pooling="flatten", dense=[1024], optimizer="adam"), 2)
    assert adam["training_bytes"] == 4 * 38_538_242 * 3
    assert head_plan((7, 7, 768), ExperimentConfig(pooling="gap", dense=[1024]), 2)["params"] == 768 * 1024 + 1024 + 2050
    with pytest.raises(ConfigError, match=r"Received: 102,\d{3},\d{3} .*Flatten of a 10x10x2048 feature map .*"
                                          r"391 MiB of weights, 1,172 MiB with adam's slots.*use pooling 'gap'"):
        check_head_size((10, 10, 2048), ExperimentConfig(pooling="flatten", dense=[500], optimizer="adam"), 2)


def test_unlocked_batchnorm_is_named_for_the_page(tiny_weights):
    from core.bases import build_base
    from core.freeze import unlocked_batchnorm

    plain = build_base("mobilenet", 32, 0.25, "none")
    w = str(tiny_weights["legacy"])
    assert unlocked_batchnorm(plain, tiny_config(weights=w, freeze="top:3")) == []
    assert unlocked_batchnorm(plain, tiny_config(weights=w, freeze="top:3", train_batchnorm=True)) == ["conv_pw_13_bn"]
    assert unlocked_batchnorm(plain, tiny_config(weights="none", freeze="none", train_batchnorm=True)) == []
