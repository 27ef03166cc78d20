"""Train: run the experiment with live loss and accuracy charts and a Stop button."""
from dataclasses import replace

import streamlit as st

from core import charts
from core.config import ConfigError
from core.model import from_scratch_warning
from core.experiments import history_rows_frame, start_training

st.title("Train")
st.write("Set how long to train and press **Train**: the charts update after every epoch, and **Stop** "
         "ends the run keeping the epochs already done. You can switch pages meanwhile.")

cfg = st.session_state.config
data = st.session_state.get("data")
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
cfg = replace(cfg, epochs=epochs, batch_size=int(batch), early_stopping=patience)
st.session_state.config = cfg

running = handle is not None and handle.running
st.caption(f"{cfg.base}, {cfg.resolved_image_size()} px, weights **{cfg.weights_label()}**, lock {cfg.freeze}, "
           f"head {cfg.pooling} → {cfg.dense or 'no hidden layer'} → dropout {cfg.dropout}, augment {cfg.augment}, "
           f"{cfg.optimizer} {cfg.lr:g}.")

problems = cfg.problems()
if from_scratch_warning(cfg):
    st.warning(from_scratch_warning(cfg))
if data is None:
    st.info("Choose a dataset first.")
    st.page_link("pages/1_data.py", label="Go to Data", icon=":material/folder_open:")
for p in problems:
    st.error(p)

if st.button("Train", type="primary", disabled=data is None or bool(problems) or running, key="train"):
    try:
        st.session_state.run = handle = start_training(cfg, data, workspace=st.session_state.get("workspace"))
        running = True
    except ConfigError as e:
        st.error(str(e))


@st.fragment(run_every=1.0 if running else None)
def live():
    h = st.session_state.get("run")
    if h is None:
        return
    p = h.snapshot()
    st.progress(p.fraction(), text=p.text())
    if p.active:
        st.button("Stop", on_click=h.request_stop, key="stop", help="Ends at the next batch; finished epochs are kept.")
    frame = history_rows_frame(p.history)
    a, b = st.columns(2)
    a.plotly_chart(charts.history_figure(frame, "loss", p.epochs), width="stretch", key="loss_chart")
    b.plotly_chart(charts.history_figure(frame, "accuracy", p.epochs), width="stretch", key="acc_chart")
    if not p.active and st.session_state.get("_shown_run") != id(h):
        st.session_state._shown_run = id(h)
        st.rerun()  # the whole page: show the result below and update the sidebar


live()

if handle is not None and not handle.running:
    p = handle.snapshot()
    result = handle.result
    if p.status == "error":
        st.error(f"The run failed: {p.message}")
    elif result is not None:
        weights = result.config.weights_label()
        if result.history:
            best = result.best_val_accuracy
            msg = (f"Run **{result.status}** after {len(result.history)} epoch(s) with weights **{weights}**: "
                   f"best validation accuracy **{best:.1%}** at epoch {result.best_epoch} (its weights are kept).")
            (st.warning if result.status == "stopped" else st.success)(msg)
            m = st.columns(4)
            m[0].metric("Best val accuracy", f"{best:.1%}")
            m[1].metric("Best epoch", result.best_epoch)
            last = result.history[-1]
            m[2].metric("Final train accuracy", f"{last['accuracy']:.1%}")
            m[3].metric("Time", f"{result.timings.get('total_s', p.elapsed()):.0f} s")
            with st.expander("History per epoch"):
                st.dataframe(result.history_frame(), hide_index=True, width="stretch")
            st.page_link("pages/5_compare.py", label="Next: compare dropout rates →", icon=":material/compare_arrows:")
            st.page_link("pages/6_evaluate.py", label="Or evaluate and download this model →", icon=":material/download:")
        else:
            st.warning(f"Run {result.status} before an epoch finished (weights {weights}); nothing to keep.")
