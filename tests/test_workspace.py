"""Per-person workspaces: ids, folders, deletion."""
from pathlib import Path

import pytest

from core.workspace import Workspace, new_id, valid_id


def test_new_ids_are_valid_and_distinct():
    ids = {new_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(valid_id(i) for i in ids)


@pytest.mark.parametrize("bad", [None, "", "short", "../../etc", "a/b" * 10, "x" * 65, "spaces are bad here!!"])
def test_bad_ids_open_a_new_workspace(bad):
    ws = Workspace.open(bad)
    assert ws.id != bad and valid_id(ws.id)
    with pytest.raises(ValueError, match="Expected 16-64"):
        Workspace(bad)


def test_same_id_reopens_same_folder_and_delete_removes_everything():
    ws = Workspace.open()
    (ws.folder("uploads", "data") / "a.zip").write_bytes(b"x" * 10)
    (ws.runs_dir / "run1").mkdir()
    again = Workspace.open(ws.id)
    assert again.root == ws.root
    assert (again.root / "uploads" / "data" / "a.zip").read_bytes() == b"x" * 10
    assert again.size_bytes() == 10
    other = Workspace.open()
    assert other.root != ws.root and not list(other.root.iterdir())
    ws.delete()
    assert not ws.exists() and other.exists()


def test_app_keeps_workspace_id_in_url_and_reattaches():
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    app = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
    at = AppTest.from_file(app, default_timeout=60).run()
    assert not at.exception
    wid = at.session_state.workspace.id
    assert valid_id(wid) and at.query_params["ws"] in (wid, [wid])
    again = AppTest.from_file(app, default_timeout=60)
    again.query_params["ws"] = wid  # a refresh: new session, same URL
    again.run()
    assert again.session_state.workspace.id == wid
    hostile = AppTest.from_file(app, default_timeout=60)
    hostile.query_params["ws"] = "../../etc"
    hostile.run()
    assert not hostile.exception and hostile.session_state.workspace.id != "../../etc"


def test_the_experiment_in_progress_round_trips_and_bad_files_start_afresh(tmp_path):
    from dataclasses import replace

    import numpy as np

    from core.config import ExperimentConfig
    from core.data import load_dataset, make_sample_dataset

    folder = make_sample_dataset(tmp_path / "s", per_class=6, size=24)
    (folder / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # skipped, and reported
    data = load_dataset(folder, val_split=0.25, seed=0)
    assert len(data.skipped) == 1
    cfg = replace(ExperimentConfig(), dropout=0.45, dense=[64, 32], freeze="top:10", val_split=0.25)
    ws = Workspace.open()
    assert ws.load_session() is None  # nothing saved yet
    ws.save_session(ws.session_text(cfg, data, data_source="sample", data_path=str(tmp_path / "s")))
    config, got, fields = Workspace.open(ws.id).load_session()
    assert config == cfg and fields == {"data_source": "sample", "data_path": str(tmp_path / "s"), "reset": []}
    assert got.class_names == data.class_names and got.train.paths == data.train.paths
    # the Data page's report comes back too: the skipped file and its reason, formats and sizes
    assert got.skipped == data.skipped and got.file_info == data.file_info and got.warnings == data.warnings
    np.testing.assert_array_equal(got.validation.labels, data.validation.labels)
    Path(data.train.paths[0]).unlink()  # a file gone since: the settings come back, not the data
    config, got, _ = ws.load_session()
    assert config == cfg and got is None
    (ws.root / "session.json").write_text('{"config": {"dropout": "x", "no_such_key": 1}}')
    assert ws.load_session() is None


@pytest.mark.parametrize("saved, kept, reset", [
    ({"base": "nope_net", "alpha": 0.25, "dropout": 0.4}, {"dropout": 0.4}, ["alpha", "base"]),
    ({"freeze": "weird", "pooling": "zzz", "dense": "x", "dropout": 0.3}, {"dropout": 0.3},
     ["dense", "freeze", "pooling"]),
    ({"image_size": -3, "dropout": 5, "lr": 0.01}, {"lr": 0.01}, ["dropout", "image_size"]),
])
def test_a_saved_setting_that_fails_its_check_comes_back_at_its_default(saved, kept, reset):
    import json

    from core.config import ExperimentConfig

    ws = Workspace.open()
    (ws.root / "session.json").write_text(json.dumps({"config": saved, "data": None, "fields": {}}))
    config, data, fields = ws.load_session()
    assert fields["reset"] == reset and config.problems() == []
    default = ExperimentConfig()
    for name in reset:
        assert getattr(config, name) == getattr(default, name)
    for name, value in kept.items():
        assert getattr(config, name) == value
    (ws.root / "session.json").write_bytes(b"\xff\x00")
    assert ws.load_session() is None


def test_a_refresh_brings_back_the_dataset_and_settings(tmp_path):
    # (AppTest reruns a page script alone after the first run, so the state is set before it;
    # tests/e2e refreshes a real browser after the whole flow)
    from streamlit.testing.v1 import AppTest

    from core.config import ExperimentConfig
    from core.data import load_dataset, make_sample_dataset

    app = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
    folder = str(make_sample_dataset(per_class=6, size=32))
    data = load_dataset(folder)
    at = AppTest.from_file(app, default_timeout=60)
    weights = tmp_path / "my.weights.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n")  # a file of the user's: named again after the refresh
    at.session_state.config = ExperimentConfig(dropout=0.35, dense=[48], image_size=32, weights=str(weights))
    for key, value in dict(data=data, data_source="built-in sample", data_path=folder, data_zip_name=None).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception
    wid = at.session_state.workspace.id
    again = AppTest.from_file(app, default_timeout=60)
    again.query_params["ws"] = wid  # a refresh: a new session on the same address
    again.run()
    assert not again.exception
    assert again.session_state.config == ExperimentConfig(dropout=0.35, dense=[48], image_size=32, weights=str(weights))
    assert again.session_state.weights_file == str(weights)  # the Base page names the file again
    assert again.session_state.data.train.paths == data.train.paths
    assert again.session_state.data_source == "built-in sample" and again.session_state.data_path == folder
    assert "built-in sample" in "\n".join(str(m.value) for m in again.sidebar.markdown)
    assert not again.toast  # nothing was reset
    session = Path(again.session_state.workspace.root) / "session.json"
    session.write_text(session.read_text().replace('"base": "mobilenet_v2"', '"base": "nope_net"'))
    edited = AppTest.from_file(app, default_timeout=60)
    edited.query_params["ws"] = wid
    edited.run()
    assert not edited.exception and edited.session_state.config.base == ExperimentConfig().base
    assert edited.session_state.config.dropout == 0.35  # the rest of the settings came back
    assert "back at their defaults: base" in edited.toast[0].value
    fresh = AppTest.from_file(app, default_timeout=60).run()  # another visitor: defaults, no data
    assert "data" not in fresh.session_state and fresh.session_state.config == ExperimentConfig()
