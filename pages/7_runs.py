"""Runs: every run of this workspace from the run store; filter, overlay, reopen, delete."""
import json

import streamlit as st

from core import charts
from core.config import ConfigError
from core.experiments import (RunBusy, delete_runs, filter_runs, handle_for_run, history_rows_frame, open_store,
                              reconcile, record_text, run_name, runs_curves, runs_table, start_continue)
from core.runstore import STATUSES

st.title("Runs")
st.write("Every training and comparison run of this workspace, kept on disk (a refresh or a crash loses "
         "nothing: finished epochs are written as they end). Tick runs to overlay their curves, open one to "
         "see its charts or to evaluate its model, delete the ones you no longer need.")

workspace = st.session_state.get("workspace")
store = open_store(workspace)
reconcile(store)  # a worker that died is marked failed here too
records = store.list(history=True)


def view(records) -> None:
    """The page below its introduction; returns early (no st.stop(): the sidebar is drawn after the page)."""
    if not records:
        st.info("No runs yet in this workspace.")
        st.page_link("pages/4_train.py", label="Go to Train", icon=":material/show_chart:")
        return

    c1, c2, c3 = st.columns([2, 2, 1.4])
    text = c1.text_input("Filter", key="w_runs_text", placeholder="e.g. dropout 0.5, mobilenet, failed")
    statuses = c2.multiselect("Status", list(STATUSES), key="w_runs_status", placeholder="any status")
    sort = c3.selectbox("Sort by", ["best validation accuracy", "newest"], key="w_runs_sort")
    shown = filter_runs(records, text, statuses, sort)
    by_id = {r.id: r for r in records}

    st.dataframe(runs_table(shown), hide_index=True, width="stretch", column_config={
        "best val accuracy": st.column_config.NumberColumn(format="percent"), "id": None,
        "run": st.column_config.TextColumn(width="large"), "error": st.column_config.TextColumn(width="medium")})
    st.caption(f"{len(shown)} of {len(records)} run(s) shown.")
    if not shown:
        return

    st.subheader("Overlay")
    ticked = st.multiselect("Runs to overlay", [r.id for r in shown], key="w_runs_overlay",
                            format_func=lambda rid: run_name(by_id[rid]) if rid in by_id else rid,
                            placeholder="tick two or more runs to compare their curves")
    if ticked:
        metric = st.radio("Curve", ["val_accuracy", "val_loss", "accuracy", "loss"], horizontal=True,
                          key="w_runs_metric", format_func=lambda m: charts.METRIC_TITLES.get(m, m))
        curves = runs_curves([by_id[r] for r in ticked if r in by_id])
        st.plotly_chart(charts.compare_figure(curves, metric), width="stretch", key="runs_overlay")

    st.subheader("Open a run")
    pick = st.selectbox("Run", [r.id for r in shown], key="w_runs_open",
                        format_func=lambda rid: run_name(by_id[rid]) if rid in by_id else rid)
    rec = by_id.get(pick)
    if rec is not None:
        say = st.error if rec.status == "failed" else (st.info if rec.active else st.success)
        say(f"**{run_name(rec)}**: {record_text(rec)}")
        frame = history_rows_frame(rec.history)
        a, b = st.columns(2)
        a.plotly_chart(charts.history_figure(frame, "loss", rec.epochs, rec.best_epoch, "best epoch (weights kept)"),
                       width="stretch", key="run_loss")
        b.plotly_chart(charts.history_figure(frame, "accuracy", rec.epochs, rec.best_epoch, "best epoch (weights kept)"),
                       width="stretch", key="run_acc")
        handle = handle_for_run(store.path, rec.id)
        result = handle.result if handle is not None and not rec.active else None
        has_model = result is not None and result.model_file is not None
        left, right = st.columns([1, 2])
        if left.button("Use this model for Evaluate & export", key="runs_use", disabled=not has_model, type="primary",
                       help=None if has_model else "This run saved no model (it failed or stopped before an epoch ended)."):
            st.session_state.run = handle
            st.switch_page("pages/6_evaluate.py")
        if rec.active:
            right.caption("Still running: its progress is on the Train (or Compare) page.")
        elif rec.run_dir:
            right.caption(f"Run folder: `{rec.run_dir}`")
        if has_model:
            with st.expander("Continue or fine-tune this run"):
                st.caption("Training goes on from the run's best weights, in its own folder; epochs are numbered on "
                           "and the charts continue, the start of fine-tuning marked.")
                k1, k2, k3 = st.columns(3)
                more = int(k1.number_input("More epochs (same phase)", 0, 1000, 0, key="w_runs_more"))
                top = int(k2.number_input("Then fine-tune the top N base layers (0 = no)", 0, 10_000, 0,
                                          key="w_runs_ft_layers", help="BatchNorm layers stay locked."))
                ft_epochs = int(k3.number_input("Fine-tuning epochs", 0, 1000, 5, key="w_runs_ft_epochs",
                                                disabled=not top))
                if st.button("Continue", key="runs_continue", disabled=not (more or (top and ft_epochs))):
                    try:
                        st.session_state.run = start_continue(workspace, rec.id, more, top, ft_epochs if top else None)
                        st.switch_page("pages/4_train.py")
                    except (ConfigError, RunBusy) as e:
                        st.error(str(e))
        with st.expander("Configuration and history"):
            st.code(json.dumps(rec.config, indent=2), language="json")
            st.dataframe(frame, hide_index=True, width="stretch")

    st.subheader("Delete")


    def _delete():
        ids = list(st.session_state.get("w_runs_delete") or [])
        n, problems = delete_runs(workspace, ids)
        st.session_state.w_runs_delete = []
        st.session_state._runs_deleted = (n, problems)
        for key in ("run", "compare"):
            h = st.session_state.get(key)
            if h is not None and set(h.run_ids) & set(ids):
                st.session_state[key] = None


    doomed = st.multiselect("Runs to delete (their run folders too)", [r.id for r in shown if not r.active],
                            key="w_runs_delete", format_func=lambda rid: run_name(by_id[rid]) if rid in by_id else rid)
    st.button(f"Delete {len(doomed)} run(s)", key="runs_delete_btn", disabled=not doomed, on_click=_delete)
    if "_runs_deleted" in st.session_state:
        n, problems = st.session_state.pop("_runs_deleted")
        if n:
            st.success(f"Deleted {n} run(s).")
        for p in problems:
            st.error(p)


view(records)
