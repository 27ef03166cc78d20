"""Train: run the experiment in a worker process, with live progress, charts and a Stop button."""
from dataclasses import replace

import streamlit as st

from core import charts
from core.bases import base_label
from core.config import ConfigError
from core.experiments import (RunBusy, busy_message, format_seconds, history_rows_frame, latest_handle,
                              launch_problems, open_store, reconcile, start_training)
from core.model import from_scratch_warning

st.title("Train")
st.write("Set how long to train and press **Train**. The run goes on in its own process: switch pages, move "
         "widgets or refresh the browser (same address) and it keeps going. **Stop** ends it at the next batch, "
         "keeping the epochs already done; every run is kept in **Runs**.")

cfg = st.session_state.config
data = st.session_state.get("data")
workspace = st.session_state.get("workspace")
if "run" not in st.session_state:  # a refresh: reattach to this workspace's last run
    st.session_state.run = latest_handle(workspace)
handle = st.session_state.get("run")


def init(key, value):
    if key not in st.session_state:
        st.session_state[key] = value


init("w_epochs", int(cfg.epochs))
init("w_batch", int(cfg.batch_size) if cfg.batch_size in (8, 16, 32, 64, 128) else 32)
init("w_patience", int(cfg.early_stopping))

c1, c2, c3 = st.columns(3)
epochs = int(c1.number_input("Epochs", min_value=1, max_value=1000, step=1, key="w_epochs"))
batch = c2.selectbox("Batch size", [8, 16, 32, 64, 128], key="w_batch")
patience = int(c3.number_input("Early stopping: patience in epochs (0 = off)", min_value=0, max_value=100,
                               step=1, key="w_patience",
                               help="Stop when validation loss has not improved for this many epochs; "
                                    "the best epoch's weights are kept either way."))
init("w_ft_layers", int(cfg.fine_tune_layers))
init("w_ft_epochs", int(cfg.fine_tune_epochs))
with st.expander("Then fine-tune (optional)", expanded=bool(cfg.fine_tune_layers)):
    f1, f2 = st.columns(2)
    ft_layers = int(f1.number_input("Unlock the top N base layers after the first phase (0 = no fine-tuning)",
                                    min_value=0, max_value=10_000, step=1, key="w_ft_layers",
                                    help="BatchNorm layers stay locked; training goes on at a learning rate "
                                         "10× lower."))
    ft_epochs = int(f2.number_input("Fine-tuning epochs", min_value=0, max_value=1000, step=1, key="w_ft_epochs",
                                    disabled=not ft_layers))
    if ft_layers:
        st.caption(f"Fine-tuning at learning rate {cfg.resolved_fine_tune_lr():g}; the charts mark where it begins.")
cfg = replace(cfg, epochs=epochs, batch_size=int(batch), early_stopping=patience, fine_tune_layers=ft_layers,
              fine_tune_epochs=ft_epochs)
st.session_state.config = cfg

st.caption(f"{base_label(cfg)}, weights **{cfg.weights_label()}**, lock {cfg.freeze}, "
           f"head {cfg.pooling} → {cfg.dense or 'no hidden layer'} → dropout {cfg.dropout}, augment {cfg.augment}, "
           f"{cfg.optimizer} {cfg.lr:g}.")

problems = launch_problems(cfg)
if from_scratch_warning(cfg):
    st.warning(from_scratch_warning(cfg))
if data is None:
    st.info("Choose a dataset first.")
    st.page_link("pages/1_data.py", label="Go to Data", icon=":material/folder_open:")
for p in problems:
    st.error(p)

busy = reconcile(open_store(workspace))  # this workspace's jobs still going (a dead worker is marked failed)
running = bool(busy)
if busy and (handle is None or busy[0].group != handle.group):
    st.info(busy_message(busy[0]) + " It is shown on the page that started it and in **Runs**.")

if st.button("Train", type="primary", disabled=data is None or bool(problems) or running, key="train",
             help="One run at a time per workspace." if running else None):
    try:
        st.session_state.run = handle = start_training(cfg, data, workspace=workspace)
        running = True
    except (ConfigError, RunBusy) as e:
        st.error(str(e))


@st.fragment(run_every=1.0 if running else None)
def live():
    h = st.session_state.get("run")
    if h is None:
        return
    p = h.snapshot()
    st.progress(p.fraction(), text=p.text())
    facts = [f"Epochs done **{p.epoch}/{p.epochs}**" if p.epochs else None,
             f"phase **{'computing base features' if p.phase == 'features' else p.phase}**"
             if p.phase not in ("", "starting", "done") else None,
             f"learning rate **{p.lr:.3g}**" if p.lr is not None else None,
             f"elapsed {format_seconds(p.elapsed())}" if p.started_at else None,
             p.eta_text() or None]
    left, right = st.columns([5, 1])
    left.markdown(" · ".join(f for f in facts if f) or " ")
    if p.active:
        right.button("Stop", on_click=h.request_stop, key="stop", disabled=p.stop_requested,
                     help="Ends at the next batch; finished epochs are kept.", width="stretch")
    else:  # takes the Stop button's place, so no stale button stays after the run
        right.caption(f"Run {p.status}.")
    frame = history_rows_frame(p.history)
    best = p.best_epoch if p.history else None
    note = "best epoch (weights kept)" if not p.active else "best so far"
    a, b = st.columns(2)
    a.plotly_chart(charts.history_figure(frame, "loss", p.epochs, best, note), width="stretch", key="loss_chart")
    b.plotly_chart(charts.history_figure(frame, "accuracy", p.epochs, best, note), width="stretch", key="acc_chart")
    if not p.active and st.session_state.get("_shown_run") != (h.group, p.status):
        st.session_state._shown_run = (h.group, p.status)
        st.rerun()  # the whole page: show the result below and update the sidebar


live()

if handle is not None and not handle.running:
    p = handle.snapshot()
    result = handle.result
    if p.status == "failed":
        kept = f" Its {len(p.history)} finished epoch(s) are kept (see **Runs**)." if p.history else ""
        st.error(f"The run failed: {p.message}.{kept}")
    elif result is not None:
        weights = result.config.weights_label()
        if result.history:
            best = result.best_val_accuracy
            msg = (f"Run **{result.status}** after {len(result.history)} epoch(s) with weights **{weights}**: "
                   f"best validation accuracy **{best:.1%}** at epoch {result.best_epoch} (its weights are kept).")
            (st.warning if result.status == "stopped" else st.success)(msg)
            if result.status == "early-stopped":
                st.caption(f"Early stopping ended the run and restored the weights of epoch {result.best_epoch} "
                           "(ringed in the charts).")
            m = st.columns(4)
            m[0].metric("Best val accuracy", f"{best:.1%}")
            m[1].metric("Best epoch", result.best_epoch)
            last = result.history[-1]
            m[2].metric("Final train accuracy", f"{last['accuracy']:.1%}")
            m[3].metric("Training time", format_seconds(result.timings.get("total_s", p.elapsed())),
                        help=f"Building, decoding and fitting. Since Train was pressed: {format_seconds(p.elapsed())}, "
                             "which includes starting the training process (loading TensorFlow).")
            with st.expander("History per epoch"):
                st.dataframe(result.history_frame(), hide_index=True, width="stretch")
            st.page_link("pages/5_compare.py", label="Next: compare dropout rates →", icon=":material/compare_arrows:")
            st.page_link("pages/6_evaluate.py", label="Or evaluate and download this model →", icon=":material/download:")
        else:
            st.warning(f"Run {result.status} before an epoch finished (weights {weights}); nothing to keep.")
