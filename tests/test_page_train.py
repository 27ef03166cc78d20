"""The Train page through AppTest: a tiny real run in a worker process, live progress, reattach after refresh.

MobileNet alpha 0.25 at 32 px, weights none, 2 epochs (helpers from test_pages)."""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import ExperimentConfig
from tests.test_pages import APP, TINY, app, texts


@pytest.fixture(scope="module")
def sample():
    from core.data import load_dataset, make_sample_dataset

    return load_dataset(make_sample_dataset(per_class=12, size=32))


def _figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_train_page_live_run_result_and_reattach(sample):
    at = app(data=sample, config=ExperimentConfig(**TINY))
    at.run()
    at.switch_page("pages/4_train.py").run()
    assert not at.exception
    at.button(key="train").click().run()
    assert not at.exception
    run = at.session_state.run
    ws = at.session_state.workspace
    assert run.running
    at.run()  # the next rerun, e.g. a widget moved: the run goes on
    # while it runs: the button refuses a second run, Stop is offered, the bar says what happens
    assert at.session_state.run is run and run.running
    assert at.button(key="train").disabled
    assert at.button(key="stop").label == "Stop"
    assert any("training process" in str(b.proto.text) or "epoch" in str(b.proto.text) for b in at.get("progress"))
    assert run.join(180)
    at.run()
    assert not at.exception
    ok = texts(at.success)
    assert "Run **completed** after 2 epoch(s) with weights **none (from scratch)**" in ok
    assert [m.label for m in at.metric] == ["Best val accuracy", "Best epoch", "Final train accuracy", "Training time"]
    figs = _figures(at)
    assert len(figs) == 2
    loss = figs[0]["data"]
    assert [t["name"] for t in loss] == ["train", "validation", "best epoch (weights kept)"]
    assert len(loss[0]["y"]) == 2
    assert "learning rate **0.0001**" in texts(at.markdown)
    result = at.session_state.run.result
    assert len(result.history) == 2 and result.history[0]["phase"] == "train"
    from core.runstore import RunStore

    rec = RunStore(ws.store_path).get(run.run_ids[0], history=False)
    run_json = json.loads((Path(rec.run_dir) / "run.json").read_text())
    assert run_json["run_id"] == result.run_id == rec.id  # run.json names the run as the Runs view does
    from core.experiments import experiment_lines

    last = dict(experiment_lines(at.session_state.config, sample, None, at.session_state.run))["Last run"]
    assert last.startswith("none (from scratch): completed after 2 epoch(s)")

    # a browser refresh: a new session with the same ?ws= reattaches to the run
    again = AppTest.from_file(APP, default_timeout=120)
    again.query_params["ws"] = ws.id
    again.session_state["config"] = ExperimentConfig(**TINY)
    again.run()
    again.switch_page("pages/4_train.py").run()
    assert not again.exception
    assert again.session_state.workspace.id == ws.id
    assert again.session_state.run.group == run.group
    assert "Run **completed** after 2 epoch(s)" in texts(again.success)
    assert len(_figures(again)[1]["data"][0]["y"]) == 2

    # another workspace never sees it
    other = app(config=ExperimentConfig(**TINY))
    other.run()
    other.switch_page("pages/4_train.py").run()
    assert not other.exception
    assert other.session_state.run is None and not other.get("plotly_chart")

    # the Runs view reopens it, and Evaluate uses its model
    at.switch_page("pages/7_runs.py").run()
    assert not at.exception
    assert at.dataframe[0].value["status"].tolist() == ["completed"]
    at.button(key="runs_use").click().run()
    assert not at.exception
    assert at.session_state.run.result.run_id == result.run_id
    assert at.metric[0].label == "Validation accuracy"

    # ... and trains it further: one more epoch, then one of fine-tuning, numbered on, in the same run
    at.switch_page("pages/7_runs.py").run()
    at.number_input(key="w_runs_more").set_value(1).run()
    at.number_input(key="w_runs_ft_layers").set_value(5).run()
    at.number_input(key="w_runs_ft_epochs").set_value(1).run()
    at.button(key="runs_continue").click().run()
    assert not at.exception
    more = at.session_state.run
    assert more.snapshot().epochs == 4  # the new total at once, not the finished run's
    assert more.join(180)
    at.switch_page("pages/4_train.py").run()
    assert not at.exception
    assert "Run **completed** after 4 epoch(s)" in texts(at.success), texts(at.error)
    assert [(r["epoch"], r["phase"]) for r in more.result.history] == [(1, "train"), (2, "train"), (3, "train"),
                                                                       (4, "fine-tune")]
    assert more.records()[0].label.endswith(", fine-tune top 5")
    assert len(list(at.session_state.workspace.runs_dir.iterdir())) == 1  # in place, no new run folder
    at.number_input(key="w_ft_layers").set_value(5).run()
    assert at.session_state.config.fine_tune_layers == 5 and "learning rate 1e-05" in texts(at.caption)


def _filled_workspace():
    from core.config import ExperimentConfig
    from core.experiments import open_store
    from core.workspace import Workspace

    ws = Workspace.open(None)
    store = open_store(ws)
    for label, accs, status in (("dropout 0", [0.5, 0.6], "finished"), ("dropout 0.5", [0.7, 0.9], "finished"),
                                ("broken", [0.4], "failed")):
        run_dir = ws.folder("runs", label.replace(" ", "_"))
        rid = store.create(ExperimentConfig(**TINY).to_json(), label=label, run_dir=run_dir, epochs=2)
        store.start(rid)
        for i, va in enumerate(accs):
            store.add_epoch(rid, {"epoch": i + 1, "loss": 1 - va, "accuracy": va, "val_loss": 1.2 - va, "val_accuracy": va})
        store.finish(rid, status, outcome="completed" if status == "finished" else "",
                     error="" if status == "finished" else "the training process was killed (SIGKILL)")
    return ws


def test_runs_page_filter_overlay_open_delete():
    ws = _filled_workspace()
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["ws"] = ws.id
    at.run()
    at.switch_page("pages/7_runs.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert [r.split(" · ")[0] for r in table["run"]] == ["dropout 0.5", "dropout 0", "broken"]  # best first
    assert table["best val accuracy"].tolist()[:2] == [0.9, 0.6]
    at.text_input(key="w_runs_text").set_value("dropout").run()
    assert len(at.dataframe[0].value) == 2
    at.text_input(key="w_runs_text").set_value("xyz-nothing").run()  # nothing shown: the page ends early
    assert "0 of 3 run(s) shown." in texts(at.caption) and not at.exception and not at.subheader
    at.text_input(key="w_runs_text").set_value("").run()
    at.multiselect(key="w_runs_status").set_value(["failed"]).run()
    assert at.dataframe[0].value["status"].tolist() == ["failed"]
    assert "killed (SIGKILL); 1 finished epoch(s) kept" in texts(at.error)
    assert at.button(key="runs_use").disabled  # it saved no model
    at.multiselect(key="w_runs_status").set_value([]).run()
    ids = at.dataframe[0].value["id"].tolist()
    at.multiselect(key="w_runs_overlay").set_value(ids[:2]).run()
    assert not at.exception
    overlay = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    assert [t["name"].split(" · ")[0] for t in overlay] == ["dropout 0.5", "dropout 0"]
    at.selectbox(key="w_runs_open").set_value(ids[1]).run()
    assert "**dropout 0 ·" in texts(at.success) and "best validation accuracy 60.0% at epoch 2" in texts(at.success)
    at.multiselect(key="w_runs_delete").set_value([ids[2]]).run()
    at.button(key="runs_delete_btn").click().run()
    assert not at.exception
    assert "Deleted 1 run(s)." in texts(at.success)
    assert len(at.dataframe[0].value) == 2 and not (ws.root / "runs" / "broken").exists()
