"""Per-person workspaces: ids, folders, deletion."""
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
