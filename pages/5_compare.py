"""Compare: the same experiment with one setting varied (dropout by default), side by side."""
from dataclasses import replace

import streamlit as st

from core import charts
from core.compare import SETTINGS, THRESHOLDS, default_values, get_setting, plan_comparison
from core.config import ConfigError
from core.model import from_scratch_warning
from core.experiments import (RunBusy, busy_message, handle_for_run, history_rows_frame, latest_handle,
                              launch_problems, open_store, reconcile, start_comparison)

st.title("Compare dropout")
st.write("Train the same experiment once per dropout rate (or per value of one other setting), on the same split "
         "from the same starting weights, and see which generalises best. Press **Compare** to run the defaults; "
         "each run is kept in **Runs**.")

cfg = st.session_state.config
data = st.session_state.get("data")
workspace = st.session_state.get("workspace")
if "compare" not in st.session_state:  # a refresh: reattach to this workspace's last comparison
    st.session_state.compare = latest_handle(workspace, "compare")
handle = st.session_state.get("compare")


def init(key, value):
    if key not in st.session_state:
        st.session_state[key] = value


init("w_setting", "dropout")
init("w_rates", ", ".join(f"{r:g}" for r in default_values("dropout", cfg)))
init("w_cmp_epochs", int(cfg.epochs))
init("w_seeds", 1)
init("w_freeze_values", ", ".join(default_values("freeze", cfg)))

setting = st.segmented_control("What to compare", list(SETTINGS), key="w_setting",
                               format_func=lambda s: SETTINGS[s].title) or "dropout"
spec = get_setting(setting)
c1, c2, c3 = st.columns([3, 1, 1])
placement = "each"
values = None
if setting == "dropout":
    values = c1.text_input("Dropout rates, separated by commas (0 ≤ rate < 1)", key="w_rates",
                           help="e.g. 0, 0.2, 0.5, 0.8. A rate near 1 drops almost every feature: the head "
                                "loses what it learned and accuracy falls.")
    if len(cfg.dense) > 1:
        placement = st.radio("Where the varied dropout sits", ["each", "output"], horizontal=True, key="w_placement",
                             format_func=lambda p: {"each": "after each dense layer",
                                                    "output": "before the output only (others 0)"}[p])
elif setting == "weights":
    values = default_values("weights", cfg)
    c1.markdown("Weights: " + " vs ".join(f"**{replace(cfg, weights=v).weights_label()}**" for v in values))
    if cfg.weights == "none":
        c1.caption("Pretrained weights come from **Base & layers** (ImageNet or a weights file); choose them there "
                   "first to compare them with from-scratch training.")
elif setting == "freeze":
    values = c1.text_input("Lock settings, separated by commas", key="w_freeze_values",
                           help="all, none, top:N (all but the top N layers locked), up-to:LAYER")
else:
    values = default_values("augment", cfg)
    c1.markdown("Augmentation: **none** vs **default** (flip, rotation, zoom, shift, contrast)")
epochs = int(c2.number_input("Epochs per run", min_value=1, max_value=1000, step=1, key="w_cmp_epochs"))
seeds = int(c3.number_input("Seeds per value", min_value=1, max_value=5, step=1, key="w_seeds",
                            help="Repeat each value with other seeds (3 suggested): the charts then show the spread, "
                                 "and a difference smaller than it gets no verdict."))

plan, problems = None, []
try:
    plan = plan_comparison(replace(cfg, epochs=epochs), setting, values, seeds=seeds, placement=placement,
                           strict=False, val_size=len(data.validation) if data is not None else None)
    problems = plan.refused
    if setting == "weights" and cfg.weights == "none":
        plan = None
except ConfigError as e:
    problems = e.problems
for p in problems:
    st.error(p + ("; going on with the valid values" if plan is not None else ""))
if plan is not None:
    blocking = sorted({p for r in plan.runs for p in launch_problems(r.config)})
    for p in blocking:
        st.error(p)
    for w in sorted({from_scratch_warning(r.config) for r in plan.runs} - {None}):
        st.warning(w)
    if blocking:
        plan = None
if plan is not None:
    st.caption(f"{len(plan.runs)} run(s): {', '.join(plan.labels)}"
               + (f" × {seeds} seeds" if seeds > 1 else "") + f". Held fixed: {plan.fixed_text()}.")

busy = reconcile(open_store(workspace))  # one job at a time per workspace
running = bool(busy)
if busy and (handle is None or busy[0].group != handle.group):
    st.info(busy_message(busy[0]))
if data is None:
    st.info("Choose a dataset first.")
    st.page_link("pages/1_data.py", label="Go to Data", icon=":material/folder_open:")

if st.button("Compare", type="primary", disabled=data is None or running or plan is None, key="compare_btn"):
    try:
        st.session_state.compare = handle = start_comparison(plan, data, workspace=workspace)
        running = True
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
    elif result is not None and result.members:
        done = get_setting(result.setting)
        st.subheader(done.title)
        if result.stopped:
            st.warning(f"Stopped: {len(result.members)} run(s) kept.")
        table = result.table()
        pct = {c: st.column_config.NumberColumn(format="percent") for c in
               ("best val accuracy", "best val accuracy sd", "final train accuracy", "final val accuracy", "final gap",
                "final gap sd", "gap growth")}
        value_col = "label" if result.setting != "dropout" else done.column  # a weights file is its name
        shown = table.drop(columns=["variant", done.column if value_col == "label" else "label"]
                           + ([] if len(result.seeds) > 1 else ["seeds", "best val accuracy sd", "final gap sd"]))
        shown = shown[[shown.columns[0], "verdict"] + [c for c in shown.columns[1:] if c != "verdict"]]
        st.dataframe(shown, hide_index=True, width="stretch", column_config={
            **pct, "epoch of best": st.column_config.NumberColumn(format="%.1f" if len(result.seeds) > 1 else "%d"),
            "final train accuracy": st.column_config.NumberColumn(
                format="percent", help="The training split re-scored in inference mode (dropout off) after the "
                                       "last epoch: the accuracy logged during training has dropout on."),
            "final gap": st.column_config.NumberColumn(format="percent", help="final train accuracy − final "
                                                                               "validation accuracy")})
        with st.expander("How the verdicts are made"):
            st.markdown("\n".join(f"- {t}" for t in result.thresholds.text()))
        figs = charts.comparison_figures(result)
        a, b = st.columns(2)
        a.plotly_chart(figs["val_accuracy"], width="stretch", key="cmp_acc")
        b.plotly_chart(figs["val_loss"], width="stretch", key="cmp_loss")
        st.plotly_chart(figs["panels"], width="stretch", key="cmp_panels")
        st.plotly_chart(figs["bars"], width="stretch", key="cmp_bars")
        d1, d2 = st.columns(2)
        d1.download_button("Download the table (CSV)", result.csv_text(), file_name="comparison.csv",
                           mime="text/csv", key="cmp_csv", icon=":material/table:")
        d2.download_button("Download the charts (HTML)", lambda: charts.comparison_html(result), file_name="comparison.html",
                           mime="text/html", key="cmp_html", icon=":material/monitoring:")
        best = result.best()
        if best is not None:
            row = table.sort_values("best val accuracy", ascending=False, kind="stable").iloc[0]
            note = "" if row["verdict"].startswith("best") else f" ({row['verdict']})"
            st.success(f"Best: {row['label']} with **{row['best val accuracy']:.1%}** validation accuracy "
                       f"(epoch {row['epoch of best']:.0f}){note}; weights {best.config.weights_label()}.")
            if st.button(f"Use the {row['label']} model for Evaluate & export", key="use_best"):
                st.session_state.run = handle_for_run(handle.store_path, best.run_id)
                kept = {k: getattr(best.config, k) for k in ("dropout", "weights", "freeze", "augment")}
                st.session_state.config = replace(st.session_state.config, **kept)
                st.switch_page("pages/6_evaluate.py")
    elif result is not None:
        st.warning("Stopped before any run finished.")
