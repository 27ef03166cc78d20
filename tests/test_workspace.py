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

    data = load_dataset(make_sample_dataset(tmp_path / "s", per_class=6, size=24), val_split=0.25, seed=0)
    cfg = replace(ExperimentConfig(), dropout=0.45, dense=[64, 32], freeze="top:10", val_split=0.25)
    ws = Workspace.open()
    assert ws.load_session() is None  # nothing saved yet
    ws.save_session(ws.session_text(cfg, data, data_source="sample", data_path=str(tmp_path / "s")))
    config, got, fields = Workspace.open(ws.id).load_session()
    assert config == cfg and fields == {"data_source": "sample", "data_path": str(tmp_path / "s")}
    assert got.class_names == data.class_names and got.train.paths == data.train.paths
    np.testing.assert_array_equal(got.validation.labels, data.validation.labels)
    Path(data.train.paths[0]).unlink()  # a file gone since: the settings come back, not the data
    config, got, _ = ws.load_session()
    assert config == cfg and got is None
    (ws.root / "session.json").write_text('{"config": {"dropout": "x", "no_such_key": 1}}')
    assert ws.load_session() is None
    (ws.root / "session.json").write_bytes(b"\xff\x00")
    assert ws.load_session() is None


def test_a_refresh_brings_back_the_dataset_and_settings():
    # (AppTest reruns a page script alone after the first run, so the state is set before it;
    # tests/e2e refreshes a real browser after the whole flow)
    from streamlit.testing.v1 import AppTest

    from core.config import ExperimentConfig
    from core.data import load_dataset, make_sample_dataset

    app = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
    folder = str(make_sample_dataset(per_class=6, size=32))
    data = load_dataset(folder)
    at = AppTest.from_file(app, default_timeout=60)
    at.session_state.config = ExperimentConfig(dropout=0.35, dense=[48], image_size=32, weights="/tmp/my.weights.h5")
    for key, value in dict(data=data, data_source="built-in sample", data_path=folder, data_zip_name=None).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception
    wid = at.session_state.workspace.id
    again = AppTest.from_file(app, default_timeout=60)
    again.query_params["ws"] = wid  # a refresh: a new session on the same address
    again.run()
    assert not again.exception
    assert again.session_state.config == ExperimentConfig(dropout=0.35, dense=[48], image_size=32,
                                                          weights="/tmp/my.weights.h5")
    assert again.session_state.weights_file == "/tmp/my.weights.h5"  # the Base page names the file again
    assert again.session_state.data.train.paths == data.train.paths
    assert again.session_state.data_source == "built-in sample" and again.session_state.data_path == folder
    assert "built-in sample" in "\n".join(str(m.value) for m in again.sidebar.markdown)
    fresh = AppTest.from_file(app, default_timeout=60).run()  # another visitor: defaults, no data
    assert "data" not in fresh.session_state and fresh.session_state.config == ExperimentConfig()
