import json

import pytest

from core.config import ConfigError, ExperimentConfig


def test_defaults_are_the_course_recipe_and_valid():
    c = ExperimentConfig().validate()
    assert (c.base, c.weights, c.freeze, c.pooling, c.dense, c.dropout) == ("mobilenet_v2", "imagenet", "all", "gap", [128], 0.2)
    assert (c.optimizer, c.lr, c.epochs, c.batch_size, c.val_split, c.seed) == ("rmsprop", 1e-4, 10, 32, 0.2, 0)
    assert c.resolved_image_size() == 224


def test_round_trips_through_json(tmp_path):
    c = ExperimentConfig(base="inception_v3", cut="mixed7", dense=[1024, 64], dropout=[0.5, 0.2],
                         freeze="up-to:mixed5", augment="default", early_stopping=3, seed=7)
    path = tmp_path / "config.json"
    c.save(path)
    back = ExperimentConfig.load(path)
    assert back == c
    assert json.loads(path.read_text())["dropout"] == [0.5, 0.2]
    assert back.dropout_rates() == [0.5, 0.2]


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_outside_0_to_1_is_refused_with_expected_and_received(rate):
    with pytest.raises(ConfigError) as e:
        ExperimentConfig(dropout=rate, weights="none").validate()
    msg = str(e.value)
    assert "dropout: Expected a rate with 0 <= rate < 1" in msg
    assert f"Received: {rate!r}" in msg


def test_every_problem_is_reported_at_once():
    c = ExperimentConfig(base="vgg99", dropout=1.0, epochs=0, pooling="max", freeze="half", lr=-1)
    names = [p.split(":")[0] for p in c.problems()]
    assert names == ["base", "freeze", "pooling", "dropout", "lr", "epochs"]


def test_per_layer_dropout_must_match_dense_layers():
    with pytest.raises(ConfigError, match=r"dropout: Expected 2 rate\(s\)"):
        ExperimentConfig(dense=[64, 32], dropout=[0.2], weights="none").validate()
    assert ExperimentConfig(dense=[], dropout=0.3).dropout_rates() == [0.3]


def test_unknown_keys_and_bad_json_are_refused():
    with pytest.raises(ConfigError, match="unknown key"):
        ExperimentConfig.from_dict({"base": "mobilenet", "droput": 0.2})
    with pytest.raises(ConfigError, match="Expected valid JSON"):
        ExperimentConfig.from_json("{not json")


def test_sizes_alpha_and_weights_are_checked(tmp_path):
    assert "image_size" in ExperimentConfig(base="inception_v3", image_size=64).problems()[0]
    assert "alpha" in ExperimentConfig(base="mobilenet_v2", alpha=0.3).problems()[0]
    assert "alpha" in ExperimentConfig(base="resnet50", alpha=0.5).problems()[0]
    assert "weights" in ExperimentConfig(weights=str(tmp_path / "missing.h5")).problems()[0]
    assert ExperimentConfig(weights="none").weights_label() == "none (from scratch)"


def test_importing_core_config_and_data_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, core, core.config, core.data, core.cli, core.bases, core.freeze; "
            "core.config.ExperimentConfig().validate(); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'streamlit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__import__("pathlib").Path(__file__).parents[1])
    assert out.stdout.split() == ["False", "False", "False"]


def test_core_never_imports_streamlit():
    import ast
    from pathlib import Path

    for path in (Path(__file__).parents[1] / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "streamlit" for n in names), path


def test_fine_tuning_and_monitor_fields_round_trip_and_are_checked(tmp_path):
    c = ExperimentConfig(weights="none", fine_tune_layers=20, fine_tune_epochs=3, fine_tune_lr=2e-5,
                         monitor="val_accuracy", early_stopping=2)
    c.save(tmp_path / "c.json")
    back = ExperimentConfig.load(tmp_path / "c.json")
    assert back == c and back.fine_tunes() and back.resolved_fine_tune_lr() == 2e-5
    assert ExperimentConfig(lr=1e-3).resolved_fine_tune_lr() == pytest.approx(1e-4)  # 10x lower by default
    assert not ExperimentConfig().fine_tunes() and not ExperimentConfig(fine_tune_layers=5, fine_tune_epochs=0).fine_tunes()
    # a config.json written before these fields existed still loads, with the defaults
    old = {k: v for k, v in c.to_dict().items() if k not in ("fine_tune_layers", "fine_tune_epochs", "fine_tune_lr", "monitor")}
    assert ExperimentConfig.from_dict(old).fine_tune_layers == 0 and ExperimentConfig.from_dict(old).monitor == "val_loss"
    bad = ExperimentConfig(weights="none", fine_tune_layers=-1, fine_tune_epochs=1.5, fine_tune_lr=0, monitor="accuracy")
    problems = bad.problems()
    assert [p.split(":")[0] for p in problems] == ["monitor", "fine_tune_layers", "fine_tune_epochs", "fine_tune_lr"]
    assert "monitor: Expected one of val_loss, val_accuracy. Received: 'accuracy'" in problems
    assert "fine_tune_lr: Expected a learning rate with 0 < lr <= 10, or null for lr / 10. Received: 0" in problems
