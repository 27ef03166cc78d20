"""Data: choose the images to learn from (the sample, or a zip of class folders)."""
from dataclasses import replace

import streamlit as st

from core import charts, samples
from core.data import SAMPLE_IMAGE_SIZE, DataError, load_dataset, make_sample_dataset

st.title("Data")
st.write("Pick the images your model will learn to tell apart: one click for the built-in sample, "
         "or upload a zip with one folder per class (or `train/` + `validation/` folders).")

cfg = st.session_state.config


def load(path: str, name: str) -> None:
    """Load (or reload) a dataset; on failure keep no data and say why."""
    with st.spinner(f"Checking every image in {name}…"):
        try:
            data = load_dataset(path, cfg.val_split, cfg.seed)
        except DataError as e:
            st.session_state.pop("data", None)
            st.session_state.data_error = f"{name}: {e}"
            return
    st.session_state.data = data
    st.session_state.data_source = name
    st.session_state.data_path = path
    st.session_state.data_key = (path, cfg.val_split, cfg.seed)
    st.session_state.pop("data_error", None)
    for key in ("run", "compare"):  # runs on other data no longer describe this experiment
        st.session_state.pop(key, None)


left, right = st.columns(2)
with left:
    st.subheader("Built-in sample")
    st.caption(f"Three classes of coloured shapes (circle, square, triangle), 40 images each, made on this "
               f"machine: no download. Its images are {SAMPLE_IMAGE_SIZE} px, so the image size is set to that.")
    if st.button("Use the sample dataset", type="primary", key="use_sample"):
        load(str(make_sample_dataset()), "built-in sample")
        # Training at the sample's own size is ~5x faster than at the base's 224 px.
        st.session_state.config = cfg = replace(cfg, image_size=SAMPLE_IMAGE_SIZE)
        st.session_state.pop("w_size", None)
with right:
    st.subheader("Your images")
    upload = st.file_uploader("Zip of class folders, or of train/ + validation/ folders", type=["zip"],
                              key="data_zip")
    if upload is not None and st.session_state.get("data_upload_id") != upload.file_id:
        st.session_state.data_upload_id = upload.file_id
        path = samples.save_upload(upload.name, upload.getvalue(), "data", st.session_state.get("workspace"))
        load(str(path), upload.name)

pct = st.select_slider("Validation share (used when the data has no validation/ folder)", list(range(5, 55, 5)),
                       value=int(round(cfg.val_split * 100)) // 5 * 5 or 5, key="w_val_split",
                       format_func=lambda v: f"{v}%")
if pct / 100 != cfg.val_split:
    cfg = replace(cfg, val_split=pct / 100)
    st.session_state.config = cfg
    data = st.session_state.get("data")
    if data is not None and data.layout == "classes":
        load(st.session_state.data_path, st.session_state.data_source)

if st.session_state.get("data_error"):
    st.error(st.session_state.data_error)

data = st.session_state.get("data")
if data is None:
    st.info("No dataset yet. Click **Use the sample dataset** to start with the built-in one.")
else:
    st.success(f"**{st.session_state.get('data_source', 'dataset')}**: {data.summary()}")
    cols = st.columns(5)
    cols[0].metric("Classes", len(data.class_names))
    cols[1].metric("Train images", len(data.train))
    cols[2].metric("Validation images", len(data.validation))
    cols[3].metric("Test images", len(data.test) if data.test is not None else 0)
    cols[4].metric("Skipped files", len(data.skipped))
    if data.layout == "classes":
        st.info(f"Your data has no validation/ folder, so {cfg.val_split:.0%} of each class is held out for "
                f"validation (seed {cfg.seed}). Every run and comparison uses this same split.")
    else:
        st.info("Using your own train/ and validation/ folders as they are.")

    table_col, chart_col = st.columns([2, 3])
    with table_col:
        st.markdown("**Images per class**")
        st.dataframe(samples.counts_table(data), hide_index=True, width="stretch")
    with chart_col:
        st.plotly_chart(charts.class_balance_figure(samples.counts_frame(data)), width="stretch")

    st.markdown("**A few training images per class**")

    @st.cache_data(max_entries=8, show_spinner=False)
    def _thumbs(fingerprint: str, _data):
        return samples.thumbnails(_data, per_class=8, size=96)

    for name, imgs in _thumbs(data.fingerprint(), data).items():
        st.caption(f"{name} ({data.train.counts()[name]} train)")
        if imgs:
            st.image(imgs, width=80)

    if data.skipped:
        st.warning(f"{len(data.skipped)} file(s) were skipped and will not be used. Reasons below.")
        st.dataframe(samples.skipped_frame(data), hide_index=True, width="stretch")
    for note in data.notes:
        st.caption(note)
    st.page_link("pages/2_base.py", label="Next: choose a pretrained base →", icon=":material/layers:")
