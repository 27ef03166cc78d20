"""core.compare: plans that vary one setting, identical starting points, inference-mode gaps, verdicts."""
import csv
import sqlite3

import numpy as np
import pytest

from conftest import learner_config, tiny_config
from core.compare import (THRESHOLDS, CompareResult, Member, comparison_csv, plan_comparison, split_rates,
                          summary_table)
from core.config import ConfigError
from core.train import RunResult


# -- plans (no TensorFlow) ---------------------------------------------------------------------------

def test_invalid_rates_are_named_and_the_valid_ones_go_on():
    rates, problems = split_rates("0, 1.0, -0.1, x, 0.5, 0.5")
    assert rates == [0.0, 0.5]
    text = " | ".join(problems)
    assert "Expected a rate with 0 <= rate < 1. Received: 1.0" in text and "Received: -0.1" in text
    assert "Received: 'x'" in text and "each rate once" in text
    plan = plan_comparison(tiny_config(), "dropout", "0, 1.0, 0.5", strict=False)
    assert plan.values == [0.0, 0.5] and len(plan.refused) == 1
    with pytest.raises(ConfigError, match="Received: 1.0"):
        plan_comparison(tiny_config(), "dropout", "0, 1.0, 0.5")  # the command line refuses it all
    with pytest.raises(ConfigError, match="Received: nothing"):
        plan_comparison(tiny_config(), "dropout", "", strict=False)


def test_a_plan_changes_only_the_setting_and_the_seed():
    cfg = tiny_config(dense=[32, 16], dropout=[0.1, 0.1])
    plan = plan_comparison(cfg, "dropout", [0.0, 0.5], seeds=3)
    assert len(plan.runs) == 6 and plan.seeds == [0, 1, 2]
    base = cfg.to_dict()
    for run in plan.runs:
        d = run.config.to_dict()
        changed = {k for k in d if d[k] != base[k]}
        assert changed <= {"dropout", "seed", "score_train"} and run.config.score_train
        assert run.config.dropout == plan.values[run.variant]
    assert [r.folder for r in plan.runs[:3]] == ["rate_0", "rate_0_seed1", "rate_0_seed2"]
    out = plan_comparison(cfg, "dropout", [0.5], placement="output")
    assert out.runs[0].config.dropout == [0.0, 0.5]  # only the dropout feeding the output varies
    aug = plan_comparison(cfg, "augment")
    assert [r.config.augment for r in aug.runs] == ["none", "default"]
    assert "dropout 0.1/0.1" in aug.fixed_text() and "augmentation" not in aug.fixed_text()
    frz = plan_comparison(cfg, "freeze", "all, top:5, sideways", strict=False)
    assert [r.config.freeze for r in frz.runs] == ["all", "top:5"] and "sideways" in frz.refused[0]
    with pytest.raises(ConfigError, match="seeds: Expected an integer from 1"):
        plan_comparison(cfg, "dropout", [0.2], seeds=0)


# -- verdicts on histories made by hand --------------------------------------------------------------

def _run(rate, train_eval, val, seed=0, best=None):
    hist = [{"epoch": i + 1, "loss": 1.0, "accuracy": t - 0.05, "val_loss": 1.0, "val_accuracy": v,
             "train_eval_accuracy": t} for i, (t, v) in enumerate(zip(train_eval, val))]
    best = best or (int(np.argmax(val)) + 1)
    return RunResult("r", tiny_config(dropout=rate, seed=seed), ["a", "b"], hist, best, val[best - 1], "completed",
                     "features")


def _result(runs, values, seeds=(0,), val_size=100):
    members = [Member(values.index(r.config.dropout), r.config.seed, r) for r in runs]
    return CompareResult("dropout", values, [f"dropout {v:g}" for v in values], list(seeds), members, val_size=val_size)


def test_verdicts_overfitting_underfitting_and_best_trade_off():
    runs = [
        _run(0.0, [0.80, 0.95, 1.00, 1.00], [0.78, 0.80, 0.79, 0.78]),  # gap 0.22, grown from 0.02: overfitting
        _run(0.2, [0.80, 0.90, 0.93, 0.94], [0.80, 0.86, 0.88, 0.90]),  # the best validation accuracy
        _run(0.8, [0.50, 0.60, 0.64, 0.66], [0.50, 0.60, 0.62, 0.63]),  # train held down: too much dropout
    ]
    table = summary_table(_result(runs, [0.0, 0.2, 0.8]))
    assert table["verdict"].tolist() == ["overfitting", "best trade-off", "under-fitting: too much dropout"]
    assert table["final train accuracy"].tolist() == pytest.approx([1.00, 0.94, 0.66])
    assert table["final gap"].tolist() == pytest.approx([0.22, 0.04, 0.03])
    assert table["best val accuracy"].tolist() == pytest.approx([0.80, 0.90, 0.63])
    assert table.loc[0, "gap growth"] == pytest.approx(0.20)
    assert THRESHOLDS.overfit_gap <= 0.22 and "10%" in THRESHOLDS.text()[0]
    text = comparison_csv(_result(runs, [0.0, 0.2, 0.8]))
    rows = list(csv.reader(text.splitlines()))
    assert rows[0] == ["rate", "best_val_accuracy", "best_epoch", "final_train_accuracy", "final_gap", "verdict"]
    assert rows[1][0] == "0" and rows[2][5] == "best trade-off" and float(rows[3][4]) == pytest.approx(0.03)


def test_no_verdict_where_the_difference_is_within_the_spread_over_seeds():
    runs = [_run(0.0, [0.9, 0.9], [0.70, 0.80], seed=0), _run(0.0, [0.9, 0.9], [0.60, 0.60], seed=1),
            _run(0.5, [0.9, 0.9], [0.72, 0.74], seed=0), _run(0.5, [0.9, 0.9], [0.70, 0.72], seed=1)]
    result = _result(runs, [0.0, 0.5], seeds=(0, 1))
    table = summary_table(result)
    assert table["seeds"].tolist() == [2, 2]
    assert table["best val accuracy"].tolist() == pytest.approx([0.70, 0.73])
    assert table.loc[0, "best val accuracy sd"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert table["verdict"].tolist() == ["within noise of the best", "no clear winner: within noise of dropout 0"]
    # one validation image is the least difference that counts: 0.73 vs 0.72 on 100 images is noise
    close = _result([_run(0.0, [0.9], [0.72]), _run(0.5, [0.9], [0.73])], [0.0, 0.5], val_size=100)
    assert summary_table(close)["verdict"].tolist()[1].startswith("no clear winner")


def test_comparison_charts_and_standalone_html():
    from core import charts

    runs = [_run(0.0, [0.8, 1.0], [0.7, 0.7]), _run(0.5, [0.7, 0.9], [0.7, 0.8])]
    result = _result(runs, [0.0, 0.5])
    figs = charts.comparison_figures(result)
    assert [t.name for t in figs["val_accuracy"].data] == ["dropout 0", "dropout 0.5"]
    assert len(figs["panels"].data) == 4  # train vs validation, per rate
    assert list(figs["bars"].data[1].y) == pytest.approx([0.3, 0.1])
    html = charts.comparison_html(result)
    assert html.startswith("<!doctype html>") and "<table" in html and "best trade-off" in html
    assert "plotly" in html and "https://cdn" not in html[:2000]  # plotly.js inside: opens offline


def test_an_older_run_store_gains_the_new_columns(tmp_path):
    from core.runstore import RunStore

    path = tmp_path / "runs.sqlite"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, grp TEXT NOT NULL, label TEXT "
                     "NOT NULL DEFAULT '', config TEXT NOT NULL, status TEXT NOT NULL, outcome TEXT NOT NULL DEFAULT "
                     "'', error TEXT NOT NULL DEFAULT '', run_dir TEXT NOT NULL DEFAULT '', pid INTEGER, "
                     "stop_requested INTEGER NOT NULL DEFAULT 0, epochs INTEGER NOT NULL DEFAULT 0, best_epoch "
                     "INTEGER, best_val_accuracy REAL, progress TEXT NOT NULL DEFAULT '{}', created REAL NOT NULL, "
                     "started REAL, finished REAL, updated REAL NOT NULL);"
                     "CREATE TABLE epochs (run_id TEXT NOT NULL, epoch INTEGER NOT NULL, phase TEXT NOT NULL "
                     "DEFAULT '', lr REAL, loss REAL, accuracy REAL, val_loss REAL, val_accuracy REAL, seconds REAL, "
                     "PRIMARY KEY (run_id, epoch));"
                     "INSERT INTO runs (id, kind, grp, config, status, created, updated) "
                     "VALUES ('old', 'train', 'old', '{}', 'finished', 1, 1);")
    db.commit()
    db.close()
    store = RunStore(path)
    rid = store.create("{}", kind="compare", meta={"setting": "dropout", "variant": 0})
    store.add_epoch(rid, {"epoch": 1, "loss": 1, "accuracy": 0.5, "val_loss": 1, "val_accuracy": 0.5,
                          "train_eval_accuracy": 0.625})
    assert store.get(rid).meta["setting"] == "dropout" and store.get(rid).history[0]["train_eval_accuracy"] == 0.625
    assert store.get("old").meta == {} and store.get("old").status == "finished"


# -- real training -------------------------------------------------------------------------------------

def test_same_initial_head_for_every_rate_and_honest_train_accuracy(colour_data_session):
    """With a learning rate too small to move anything, every rate's run ends where it began: the
    same head, weight for weight (only the dropout differs); another seed starts elsewhere. The
    re-scored train accuracy is the model's own, in inference mode, on the training images."""
    from core.compare import run_comparison
    from core.train import _arrays, inference_accuracy, train

    # seeds of their own: other tests' feature-cache hits and misses stay theirs
    cfg = learner_config(epochs=1, optimizer="sgd", lr=1e-12, dense=[16], seed=5)
    plan = plan_comparison(cfg, "dropout", [0.0, 0.8], seeds=2)
    result = run_comparison(plan, colour_data_session)
    heads = {(m.variant, m.seed): [np.array(w) for w in m.result.model.get_layer("head_dense_1").get_weights()]
             for m in result.members}
    for a, b in zip(heads[(0, 5)], heads[(1, 5)]):
        np.testing.assert_allclose(a, b, atol=1e-9)
    assert not np.allclose(heads[(0, 5)][0], heads[(0, 6)][0])
    data = colour_data_session
    trained = train(learner_config(epochs=2, dropout=0.8, score_train=True, seed=5), data)
    assert trained.best_epoch == 2 or len(trained.history) == 2
    x = _arrays(data.train.paths, 32)
    model_acc = inference_accuracy(trained.model, x, data.train.labels)
    if trained.best_epoch == 2:  # the kept model is the last epoch's: its score is the one logged
        assert trained.history[-1]["train_eval_accuracy"] == pytest.approx(model_acc, abs=1.01 / len(x))
    assert all(0 <= r["train_eval_accuracy"] <= 1 for r in trained.history)


def test_compare_dropout_command_writes_run_folders_and_the_table(colour_dir, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "cmp"
    argv = ["compare-dropout", "--data", str(colour_dir), "--rates", "0,0.5",
            "--base", "resnet50", "--image-size", "32", "--weights", "none", "--dense", "0", "--optimizer", "adam",
            "--lr", "3e-3", "--epochs", "8", "--batch-size", "16", "--quiet", "--out", str(out)]
    code = main(argv)
    stderr = capsys.readouterr().err
    assert code == 0, stderr[-2000:]
    for rate in ("0", "0.5"):
        folder = out / f"rate_{rate}"
        assert {"model.keras", "config.json", "history.csv", "run.json", "labels.json"} <= {p.name for p in folder.iterdir()}
        with open(folder / "history.csv", encoding="utf-8") as f:
            hist = list(csv.DictReader(f))
        assert len(hist) == 8 and all(0 <= float(r["train_eval_accuracy"]) <= 1 for r in hist)
    rows = list(csv.DictReader(open(out / "comparison.csv", encoding="utf-8")))
    assert [r["rate"] for r in rows] == ["0", "0.5"]
    assert max(float(r["best_val_accuracy"]) for r in rows) >= 0.75  # the colour set is separable
    for r in rows:
        assert float(r["final_gap"]) == pytest.approx(float(r["final_train_accuracy"]) - float(
            list(csv.DictReader(open(out / f"rate_{r['rate']}" / "history.csv")))[-1]["val_accuracy"]), abs=1e-3)
    assert (out / "comparison.html").stat().st_size > 100_000  # plotly.js inside
    assert "best val_accuracy" in stderr and "warning: weights none with every base layer locked" in stderr


@pytest.mark.parametrize("argv, message", [
    (["--rates", "0,1.0"], "Expected a rate with 0 <= rate < 1. Received: 1.0"),
    (["--rates", "-0.1"], "Received: -0.1"),
    (["--rates", "0.2", "--seeds", "0"], "seeds: Expected an integer from 1"),
    (["--rates", "0.2", "--weights", "none", "--base", "mobilenet", "--alpha", "0.25", "--image-size", "32",
      "--freeze", "up-to:nope"], "freeze: Expected up-to: with layer names of the base. Received: 'nope'"),
])
def test_compare_dropout_refuses_bad_rates_before_any_work(argv, message, colour_dir, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "never"
    assert main(["compare-dropout", "--data", str(colour_dir), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()


def test_heads_side_by_side_learn_as_each_would_alone(colour_data_session):
    """One fit of every rate's head on the features computed once: the rate-0 head (no dropout,
    nothing random) ends exactly where its own run does, and every run keeps a whole model."""
    from core.train import train, train_together

    configs = [learner_config(epochs=4, dropout=r, dense=[], seed=7, score_train=True) for r in (0.0, 0.5, 0.8)]
    together = train_together(configs, colour_data_session)
    alone = train(configs[0], colour_data_session)
    assert [r.config.dropout for r in together] == [0.0, 0.5, 0.8]
    assert all(r.path == "features" and len(r.history) == 4 and r.timings["together"] == 3 for r in together)
    for key in ("accuracy", "val_loss", "val_accuracy", "train_eval_accuracy"):
        assert [h[key] for h in together[0].history] == pytest.approx([h[key] for h in alone.history], abs=1e-5)
    assert all(0 <= h["train_eval_accuracy"] <= 1 for r in together for h in r.history)
    assert [h["loss"] for h in together[0].history] == pytest.approx([h["loss"] for h in alone.history], rel=1e-4)
    for a, b in zip(together[0].model.get_weights(), alone.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert together[0].best_val_accuracy >= 0.75  # it learns: the colours are separable
    assert together[1].model is not together[0].model and together[1].model.input_shape == (None, 32, 32, 3)
    assert not np.allclose(together[1].model.get_layer("predictions").get_weights()[0],
                           together[0].model.get_layer("predictions").get_weights()[0])  # trained apart


def test_a_folder_holding_an_earlier_comparison_is_refused(colour_dir, tmp_path, capsys):
    from core.cli import main

    out = tmp_path / "cmp"
    (out / "rate_0").mkdir(parents=True)
    (out / "rate_0" / "run.json").write_text("{}")
    (out / "comparison.csv").write_text("rate\n0\n")
    argv = ["compare-dropout", "--data", str(colour_dir), "--out", str(out), "--rates", "0,0.5", "--weights", "none",
            "--base", "mobilenet", "--alpha", "0.25", "--image-size", "32"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "out: Expected a new or empty folder for the comparison" in err and "comparison.csv, rate_0" in err
    assert (out / "comparison.csv").read_text() == "rate\n0\n"  # nothing of the earlier one is lost
