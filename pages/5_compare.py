"""Compare dropout: the same experiment at several dropout rates, overlaid."""
from dataclasses import replace

import streamlit as st

from core import charts
from core.config import ConfigError
from core.experiments import (DEFAULT_RATES, RunBusy, busy_message, handle_for_run, history_rows_frame,
                              latest_handle, open_store, reconcile, start_compare)

st.title("Compare dropout")
st.write("Train the same experiment once per dropout rate, on the same split with the same seed, and see "
         "which rate generalises best. Press **Compare** to run the defaults. Each rate's run is kept in **Runs**.")

cfg = st.session_state.config
data = st.session_state.get("data")
workspace = st.session_state.get("workspace")
if "compare" not in st.session_state:  # a refresh: reattach to this workspace's last comparison
    st.session_state.compare = latest_handle(workspace, "compare")
handle = st.session_state.get("compare")

if "w_rates" not in st.session_state:
    st.session_state.w_rates = ", ".join(f"{r:g}" for r in DEFAULT_RATES)
if "w_cmp_epochs" not in st.session_state:
    st.session_state.w_cmp_epochs = int(cfg.epochs)

c1, c2 = st.columns([2, 1])
text = c1.text_input("Dropout rates, separated by commas (0 ≤ rate < 1)", key="w_rates")
epochs = int(c2.number_input("Epochs per run", min_value=1, max_value=1000, step=1, key="w_cmp_epochs"))
st.caption(f"Everything else as set on the other pages: {cfg.base}, weights **{cfg.weights_label()}**, "
           f"lock {cfg.freeze}, head {cfg.pooling} → {cfg.dense or 'no hidden layer'}, seed {cfg.seed}.")

busy = reconcile(open_store(workspace))  # one job at a time per workspace
running = bool(busy)
if busy and (handle is None or busy[0].group != handle.group):
    st.info(busy_message(busy[0]))
if data is None:
    st.info("Choose a dataset first.")
    st.page_link("pages/1_data.py", label="Go to Data", icon=":material/folder_open:")

if st.button("Compare", type="primary", disabled=data is None or running, key="compare_btn"):
    try:
        st.session_state.compare = handle = start_compare(replace(cfg, epochs=epochs), data, text, workspace=workspace)
        running = True
    except ConfigError as e:
        for p in e.problems:
            st.error(p)
    except RunBusy as e:
        st.error(str(e))


@st.fragment(run_every=1.0 if running else None)
def live():
    h = st.session_state.get("compare")
    if h is None:
        return
    p = h.snapshot()
    st.progress(p.fraction(), text=p.text())
    if p.active:
        st.button("Stop", on_click=h.request_stop, key="stop_compare")
        import pandas as pd

        frames = [history_rows_frame(rows, label) for label, rows in p.finished]
        frames.append(history_rows_frame(p.history, p.label))
        curves = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
        st.plotly_chart(charts.compare_figure(curves, "val_accuracy"), width="stretch", key="cmp_live")
    elif st.session_state.get("_shown_compare") != (h.group, p.status):
        st.session_state._shown_compare = (h.group, p.status)
        st.rerun()


live()

if handle is not None and not handle.running:
    p = handle.snapshot()
    result = handle.result
    if p.status == "failed":
        st.error(f"The comparison failed: {p.message}")
    elif result is not None and result.runs:
        if result.stopped:
            st.warning(f"Stopped: {len(result.runs)} of {len(result.rates)} run(s) kept.")
        table = result.table()
        st.dataframe(table, hide_index=True, width="stretch", column_config={
            c: st.column_config.NumberColumn(format="percent") for c in
            ("best val accuracy", "final train accuracy", "final val accuracy", "final train–val gap")})
        curves = result.curves()
        a, b = st.columns(2)
        a.plotly_chart(charts.compare_figure(curves, "val_accuracy"), width="stretch", key="cmp_acc")
        b.plotly_chart(charts.compare_figure(curves, "val_loss"), width="stretch", key="cmp_loss")
        best = result.best()
        if best is not None:
            rate = best.config.dropout_rates()[0]
            st.success(f"Best: dropout **{rate:g}** with {best.best_val_accuracy:.1%} validation accuracy "
                       f"(epoch {best.best_epoch}); weights {best.config.weights_label()}.")
            if st.button(f"Use the dropout {rate:g} model for Evaluate & export", key="use_best"):
                st.session_state.run = handle_for_run(handle.store_path, best.run_id)
                st.session_state.config = replace(st.session_state.config, dropout=best.config.dropout)
                st.switch_page("pages/6_evaluate.py")
    elif result is not None:
        st.warning("Stopped before any run finished.")
