"""The headless command end to end, in real subprocesses as a user runs it."""
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "core", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_weights):
    from tests.conftest import write_colour_images

    tmp = tmp_path_factory.mktemp("cli")
    data = write_colour_images(tmp / "data", per_class=10)
    out = tmp / "run"
    r = run_cli("train", "--data", data, "--base", "mobilenet", "--alpha", "0.25", "--image-size", "32",
                "--weights", tiny_weights["legacy"], "--dense", "8", "--dropout", "0.3", "--epochs", "3",
                "--batch-size", "8", "--lr", "0.01", "--optimizer", "adam", "--seed", "4", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp, data, out, r


def test_train_writes_the_run_folder(trained_run):
    tmp, data, out, r = trained_run
    assert {p.name for p in out.iterdir()} >= {"model.keras", "labels.json", "config.json", "history.csv", "run.json"}
    rows = list(csv.DictReader(io.StringIO((out / "history.csv").read_text())))
    assert [int(x["epoch"]) for x in rows] == [1, 2, 3]
    assert list(rows[0])[:5] == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    run = json.loads((out / "run.json").read_text())
    assert run["class_names"] == ["blue", "green", "red"] and run["status"] == "completed"
    assert run["best_epoch"] in (1, 2, 3)
    assert run["best_val_accuracy"] == max(float(x["val_accuracy"]) for x in rows)
    assert len(run["train_files"]) == 24 and len(run["validation_files"]) == 6
    assert run["config"]["dense"] == [8] and run["config"]["dropout"] == 0.3 and run["config"]["seed"] == 4
    assert json.loads((out / "labels.json").read_text())["class_names"] == ["blue", "green", "red"]
    assert "epoch 3/3" in r.stderr and "Traceback" not in r.stderr


def test_predict_prints_csv_and_matches_the_model(trained_run):
    tmp, data, out, _ = trained_run
    from core.export import load_model
    from core.predict import predict_files

    images = sorted((data / "red").glob("*.png"))[:2] + sorted((data / "blue").glob("*.png"))[:1]
    broken = tmp / "broken.jpg"
    broken.write_text("not a photo")
    r = run_cli("predict", out / "model.keras", *images, broken, "--top", "2")
    assert r.returncode == 1  # one unreadable image
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(rows) == 6 and list(rows[0]) == ["path", "class", "probability"]
    model, names = load_model(out / "model.keras")
    preds, failures = predict_files(model, names, images, top=2)
    for row, (p, k) in zip(rows, [(p, k) for p in preds for k in range(2)]):
        assert row["class"] == p.top[k][0]
        assert float(row["probability"]) == pytest.approx(p.top[k][1], abs=1e-5)


def test_config_file_reproduces_and_flags_override(trained_run, tmp_path):
    _, data, out, _ = trained_run
    from core.cli import _parser, config_from_args

    args = _parser().parse_args(["train", "--data", str(data), "--out", str(tmp_path), "--config",
                                 str(out / "config.json"), "--epochs", "7", "--dense", "0"])
    cfg = config_from_args(args)
    assert cfg.epochs == 7 and cfg.dense == [] and cfg.seed == 4 and cfg.image_size == 32
    args = _parser().parse_args(["train", "--data", str(data), "--out", str(tmp_path), "--config",
                                 str(out / "config.json"), "--fine-tune", "30", "--fine-tune-epochs", "4",
                                 "--fine-tune-lr", "1e-5", "--monitor", "val_accuracy"])
    cfg = config_from_args(args)
    assert (cfg.fine_tune_layers, cfg.fine_tune_epochs, cfg.fine_tune_lr, cfg.monitor) == (30, 4, 1e-5, "val_accuracy")


def test_fine_tune_then_continue_from_the_command_line(trained_run, tmp_path):
    _, data, _, _ = trained_run
    out = tmp_path / "run"
    r = run_cli("train", "--data", data, "--base", "mobilenet", "--alpha", "0.25", "--image-size", "32",
                "--weights", "none", "--dense", "8", "--epochs", "1", "--batch-size", "8", "--fine-tune", "6",
                "--fine-tune-epochs", "1", "--lr", "0.01", "--optimizer", "adam", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "epoch 1/2 [head]" in r.stderr and "epoch 2/2 [fine-tune]" in r.stderr and "lr 0.001" in r.stderr
    r = run_cli("continue", out, "--epochs", "1", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO((out / "history.csv").read_text())))
    assert [(x["epoch"], x["phase"]) for x in rows] == [("1", "head"), ("2", "fine-tune"), ("3", "fine-tune")]
    assert [float(x["lr"]) for x in rows] == pytest.approx([0.01, 0.001, 0.001])
    r = run_cli("continue", out)
    assert r.returncode == 2 and "Expected more epochs or a fine-tuning phase" in r.stderr


def test_fine_tuning_more_layers_than_the_base_has_is_refused_and_leaves_nothing(trained_run, tmp_path):
    _, data, run, _ = trained_run
    out = tmp_path / "new_run"
    r = run_cli("train", "--data", data, "--base", "mobilenet", "--alpha", "0.25", "--image-size", "32",
                "--weights", "none", "--epochs", "1", "--fine-tune", "500", "--out", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: fine_tune_layers: Expected 0 to 86 (the layers of MobileNet). Received: 500" in r.stderr
    assert not out.exists()  # no empty run folder left behind
    before = {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()}
    r = run_cli("continue", run, "--fine-tune", "500", "--fine-tune-epochs", "1")
    assert r.returncode == 2 and "Expected 0 to 86" in r.stderr and "Traceback" not in r.stderr
    assert {f.name: f.read_bytes() for f in run.iterdir() if f.is_file()} == before


@pytest.mark.parametrize("argv,code,message", [
    (["train", "--data", "x", "--out", "y", "--dropout", "1.0"], 2, "dropout: Expected a rate with 0 <= rate < 1. Received: 1.0"),
    (["train", "--data", "x", "--out", "y", "--dropout", "-0.1"], 2, "Received: -0.1"),
    (["train", "--data", "x", "--out", "y", "--freeze", "half"], 2, "freeze: Expected"),
    (["train", "--data", "x", "--out", "y", "--fine-tune", "-3"], 2, "fine_tune_layers: Expected"),
    (["train", "--data", "x", "--out", "y", "--monitor", "loss"], 2, "monitor: Expected one of val_loss, val_accuracy"),
    (["train", "--data", "x", "--out", "y", "--strategy", "tpu"], 2, "invalid choice"),
    (["continue", "/no/such/run", "--epochs", "1"], 2, "Expected a run folder"),
    (["train", "--out", "y"], 2, "the following arguments are required: --data"),
    (["train", "--data", "/no/such/folder", "--out", "y", "--weights", "none"], 1, "does not exist"),
    (["bake"], 2, "invalid choice"),
])
def test_user_mistakes_are_one_line_and_the_right_exit_code(argv, code, message, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_text_file_as_weights_exits_1(tmp_path, capsys):
    from tests.conftest import write_colour_images

    data = write_colour_images(tmp_path / "d", per_class=3)
    w = tmp_path / "weights.h5"
    w.write_text("not weights")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "o"), "--weights", str(w),
                 "--base", "mobilenet", "--alpha", "0.25", "--image-size", "32", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "error: weights: Expected an HDF5 weights file" in err and "Traceback" not in err


def test_imagenet_offline_exits_1_with_advice(tmp_path, monkeypatch, capsys):
    from keras.src.utils import file_utils

    from tests.conftest import write_colour_images

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://example.invalid: None -- [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    data = write_colour_images(tmp_path / "d", per_class=3)
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "o"), "--base", "mobilenet",
                 "--alpha", "0.25", "--image-size", "128", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: Could not download the ImageNet weights for MobileNet")
    assert "--weights PATH" in err[-1] and "--weights none" in err[-1]


def test_predict_refuses_a_non_model_file(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    fake = tmp_path / "model.keras"
    fake.write_text("nope")
    assert main(["predict", str(fake), str(img)]) == 1
    assert "error: model: Expected a .keras file" in capsys.readouterr().err


def test_out_must_be_a_writable_folder_before_any_work(tmp_path, capsys):
    f = tmp_path / "notadir"
    f.write_text("x")
    assert main(["train", "--data", str(tmp_path), "--out", str(f), "--weights", "none"]) == 2
    assert "out: Expected a folder for the run. Received:" in capsys.readouterr().err


def test_config_files_that_are_binary_or_mistyped_are_refused(tmp_path, capsys):
    binary = tmp_path / "w.h5"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\x00\xff")
    typed = tmp_path / "c.json"
    typed.write_text('{"dense": 128, "base": ["mobilenet"]}')
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"epochs": 3}')
    for cfg, msg in ((binary, "Expected a JSON text file"), (typed, "dense: Expected a list")):
        assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
        assert msg in capsys.readouterr().err
    from core.config import ExperimentConfig

    assert ExperimentConfig.load(bom).epochs == 3
    assert "base: Expected one of" in ExperimentConfig(base=["mobilenet"]).problems()[0]
    assert "seed" in ExperimentConfig(seed=2**32).problems()[0]


def test_predict_expands_folders_and_refuses_models_without_image_input(trained_run, tmp_path):
    import keras

    _, data, out, _ = trained_run
    r = run_cli("predict", out / "model.keras", data / "red")
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.strip().splitlines()) == 1 + 10
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(tmp_path / "vector.keras")
    from core.export import ModelFileError, load_model

    with pytest.raises(ModelFileError, match=r"Expected a model taking images .* input shape \(None, 4\)"):
        load_model(tmp_path / "vector.keras")
