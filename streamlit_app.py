"""Transfer Lab in the browser: ``streamlit run streamlit_app.py``.

This file sets the page config, seeds the session keys every page shares,
calls ``st.navigation`` over the six pages and fills the sidebar with the
experiment so far. Session keys: ``data`` (DataSplits), ``data_source``
(its name), ``config`` (the ExperimentConfig built across pages), ``run``
(the last training handle, its ``.result`` a RunResult), ``compare`` (the
dropout comparison handle), ``weights_file`` (an uploaded weights file).
"""
from pathlib import Path

import streamlit as st

from core.config import ExperimentConfig
from core.experiments import experiment_lines, latest_handle
from core.workspace import Workspace

ICON = Path(__file__).with_name("assets") / "icon.png"  # served by the app itself: no font download


def pages() -> list:
    return [
        st.Page("pages/1_data.py", title="1 · Data", icon=":material/folder_open:", url_path="data", default=True),
        st.Page("pages/2_base.py", title="2 · Base & layers", icon=":material/layers:", url_path="base"),
        st.Page("pages/3_head.py", title="3 · Head & augmentation", icon=":material/tune:", url_path="head"),
        st.Page("pages/4_train.py", title="4 · Train", icon=":material/show_chart:", url_path="train"),
        st.Page("pages/5_compare.py", title="5 · Compare dropout", icon=":material/compare_arrows:", url_path="compare"),
        st.Page("pages/6_evaluate.py", title="6 · Evaluate & export", icon=":material/download:", url_path="evaluate"),
        st.Page("pages/7_runs.py", title="Runs", icon=":material/history:", url_path="runs"),
    ]


SESSION_FIELDS = ("data_source", "data_path", "data_zip_name")


def restore(ws: Workspace) -> None:
    """The settings and dataset this workspace had (a browser refresh loses nothing), or defaults."""
    saved = ws.load_session()
    config, data, fields = saved if saved else (ExperimentConfig(), None, {})
    st.session_state.config = config
    reset = fields.get("reset") or []
    if reset:  # the saved file was edited, or written by another version: say what did not come back
        st.session_state.restore_notice = (
            "The saved settings could not be used: every setting is back at its default." if reset == ["all"] else
            f"Saved settings that could not be used are back at their defaults: {', '.join(reset)}.")
    if config.weights not in ("imagenet", "none"):  # an uploaded (or given) weights file: the Base page shows it
        st.session_state.weights_file = config.weights
    if data is not None and fields.get("data_path"):
        st.session_state.data = data
        for key in SESSION_FIELDS:
            st.session_state[key] = fields.get(key)
        st.session_state.data_key = (fields["data_path"], config.val_split, config.test_split, config.seed)


def keep(ws: Workspace) -> None:
    """Save the experiment into the workspace when this run changed it."""
    text = ws.session_text(st.session_state.config, st.session_state.get("data"),
                           **{key: st.session_state.get(key) for key in SESSION_FIELDS})
    if st.session_state.get("session_saved") != (ws.id, text):
        ws.save_session(text)
        st.session_state.session_saved = (ws.id, text)


def main() -> None:
    st.set_page_config(page_title="Transfer Lab", page_icon=str(ICON), layout="wide")

    if "workspace" not in st.session_state:
        st.session_state.workspace = Workspace.open(st.query_params.get("ws"))
    if "config" not in st.session_state:  # a new session, or a refresh: the workspace's experiment, if any
        restore(st.session_state.workspace)
    if st.query_params.get("ws") != st.session_state.workspace.id:  # page switches drop query params
        st.query_params["ws"] = st.session_state.workspace.id
    if "run" not in st.session_state:  # a refresh: reattach to the workspace's last run (the run store)
        st.session_state.run = latest_handle(st.session_state.workspace)

    page = st.navigation(pages())

    # Filled after the page ran, so it shows what the page just changed.
    summary = st.sidebar.container()
    if st.session_state.get("restore_notice"):
        st.toast(st.session_state.pop("restore_notice"), icon=":material/restart_alt:")
    try:
        page.run()
    finally:  # also when the run is cut short (a click, a closed tab): what it changed so far is kept
        keep(st.session_state.workspace)

    with summary:
        st.markdown("#### Your experiment")
        lines = experiment_lines(st.session_state.get("config"), st.session_state.get("data"),
                                 st.session_state.get("data_source"), st.session_state.get("run"))
        for label, text in lines:
            st.markdown(f"**{label}**  \n{text}")


# Streamlit runs this file as __main__; a training worker (multiprocessing "spawn") imports it as
# __mp_main__ and must not run the app, nor open a workspace of its own.
if __name__ == "__main__":
    main()
