"""Data: choose the images to learn from (the sample, zips, classes uploaded one by one, a course
dataset, or a folder on the server), then read the report: counts, sizes, thumbnails, skipped files."""
import re
from dataclasses import replace

import streamlit as st

from core import baseinfo, charts, samples
from core.data import (FOLDERS_ENV, PUBLIC_DATASETS, SAMPLE_IMAGE_SIZE, DataError, add_class_images,
                       check_server_folder, class_folder_counts, download_dataset, load_dataset,
                       make_sample_dataset, merge_zips, remove_class, server_folders)
from core.images import ImageDecodeError
from core.workspace import Workspace

st.title("Data")
st.write("Pick the images your model will learn to tell apart: one click for the built-in sample, "
         "or bring your own: zips of class folders (or `train/` + `validation/`), images uploaded class "
         "by class, a course dataset, or a folder on this computer.")

if st.session_state.pop("data_deleted", False):
    st.success("Deleted: your uploads, unpacked data and runs are gone. You have a fresh, empty workspace.")

cfg = st.session_state.config
if "workspace" not in st.session_state:
    st.session_state.workspace = Workspace.open(st.query_params.get("ws"))
ws = st.session_state.workspace
MAX_MB = int(st.get_option("server.maxUploadSize"))
LIMIT = f"Up to {MAX_MB} MB per file (`server.maxUploadSize` in `.streamlit/config.toml`)."
DATA_KEYS = ("data", "data_source", "data_path", "data_zip_name", "data_key", "data_error", "data_upload_id",
             "data_thumbs", "run", "compare")


def load(path: str, name: str, zip_name: str | None = None) -> None:
    """Load (or reload) a dataset with a progress bar; on failure keep no data and say why."""
    bar = st.progress(0.0, text=f"Checking every image in {name}…")

    def progress(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Checking {name}: {done:,} of {total:,} images")

    def unpacking(done: int, total: int) -> None:
        bar.progress(done / max(total, 1), text=f"Unpacking {name}: {done:,} of {total:,} files")

    try:
        data = load_dataset(path, cfg.val_split, cfg.seed, test_split=cfg.test_split, progress=progress,
                            unpack_dir=ws.folder("unpacked"), name=zip_name, unpack_progress=unpacking)
    except DataError as e:
        st.session_state.pop("data", None)
        st.session_state.data_error = f"{name}: {e}"
        return
    finally:
        bar.empty()
    st.session_state.data = data
    st.session_state.data_source = name
    st.session_state.data_path = path
    st.session_state.data_zip_name = zip_name
    st.session_state.data_key = (path, cfg.val_split, cfg.test_split, cfg.seed)
    st.session_state.pop("data_error", None)
    for key in ("run", "compare"):  # runs on other data no longer describe this experiment
        st.session_state.pop(key, None)


def md(text: str) -> str:
    """File and class names shown as written, not as Markdown (``my_photo_1.jpg`` is not italics)."""
    return re.sub(r"([\\`*_{}\[\]()#+!|<>~$:])", r"\\\1", str(text))


def fail(message: str) -> None:
    st.session_state.pop("data", None)
    st.session_state.data_error = message


def too_big(files) -> list[str]:
    return [f"{f.name}: Expected at most {MAX_MB} MB. Received: {f.size / 2**20:,.1f} MB"
            for f in files if f.size > MAX_MB * 2**20]


sample_tab, zip_tab, class_tab, course_tab, folder_tab = st.tabs(
    ["Built-in sample", "Zip upload", "Class by class", "Course datasets", "Folder on this computer"])

with sample_tab:
    st.caption(f"Three classes of coloured shapes (circle, square, triangle), 40 images each, made on this "
               f"machine: no download. Its images are {SAMPLE_IMAGE_SIZE} px, so the image size is set to that.")
    if st.button("Use the sample dataset", type="primary", key="use_sample"):
        load(str(make_sample_dataset()), "built-in sample")
        # Training at the sample's own size is ~5x faster than at the base's 224 px.
        st.session_state.config = cfg = replace(cfg, image_size=SAMPLE_IMAGE_SIZE)
        st.session_state.pop("w_size", None)

deletions = st.session_state.get("data_deletions", 0)  # new widget keys after "Delete my data": empty uploaders
with zip_tab:
    uploads = st.file_uploader("Zips of class folders, or of train/ + validation/ folders (several zips are "
                               "merged into one dataset)", type=["zip"], accept_multiple_files=True,
                               key=f"data_zip_{deletions}" if deletions else "data_zip", help=LIMIT)
    st.caption(LIMIT + " Zips are unpacked in your own workspace, which no other visitor can see.")
    upload_id = tuple(u.file_id for u in uploads or [])
    if upload_id and st.session_state.get("data_upload_id") != upload_id:
        st.session_state.data_upload_id = upload_id
        if problems := too_big(uploads):
            fail("; ".join(problems))
        else:
            paths = [str(samples.save_upload(u.name, u.getvalue(), "data", ws)) for u in uploads]
            names = [u.name for u in uploads]
            if len(paths) == 1:
                load(paths[0], names[0], names[0])
            else:
                try:
                    with st.spinner(f"Unpacking and merging {len(paths)} zips…"):
                        merged = merge_zips(paths, ws.folder("merged"), ws.folder("unpacked"), names)
                except DataError as e:
                    fail(str(e))
                else:
                    load(str(merged), " + ".join(names))

with class_tab:
    st.caption("Teachable Machine style: type a class name, add its images, repeat for each class "
               "(at least two), then use them. " + LIMIT)
    class_root = ws.folder("classes")
    counter = st.session_state.setdefault("cls_upload_round", 0) + 1000 * deletions
    name_col, files_col = st.columns([1, 2])
    cls_name = name_col.text_input("Class name", key="cls_name", placeholder="e.g. cats")
    cls_files = files_col.file_uploader("Images of this class", accept_multiple_files=True,
                                        key=f"cls_files_{counter}", help=LIMIT)
    if st.button("Add these images to the class", key="cls_add", disabled=not cls_files):
        try:
            if problems := too_big(cls_files):
                raise DataError("; ".join(problems))
            kept, refused = add_class_images(class_root, cls_name, [(f.name, f.getvalue()) for f in cls_files])
        except DataError as e:
            st.session_state.cls_message = ("error", str(e))
        else:
            st.session_state.cls_upload_round += 1  # a fresh, empty uploader
            text = f"Added {kept} image(s) to {cls_name.strip()}."
            if refused:
                text += " Not images, left out: " + "; ".join(f"{s.path} ({s.reason})" for s in refused)
            st.session_state.cls_message = ("warning" if refused else "success", text)
            st.rerun()
    if msg := st.session_state.get("cls_message"):
        getattr(st, msg[0])(md(msg[1]))
    counts = class_folder_counts(class_root)
    if counts:
        for name, n in counts.items():
            c1, c2 = st.columns([4, 1])
            c1.markdown(f"**{md(name)}**: {n} image(s)")
            if c2.button("Remove", key=f"cls_remove_{name}", icon=":material/delete:"):
                remove_class(class_root, name)
                st.session_state.pop("cls_message", None)
                st.rerun()
    if st.button("Use these classes", key="cls_use", type="primary", disabled=len(counts) < 2,
                 help="Needs at least two classes"):
        load(str(class_root), "your classes")

with course_tab:
    st.caption("The course's public datasets, downloaded once (internet needed) and kept on this server.")
    choice = st.selectbox("Dataset", list(PUBLIC_DATASETS), format_func=lambda k: PUBLIC_DATASETS[k][0],
                          key="public_name")
    if st.button("Download and use", key="use_public"):
        try:
            with st.spinner(f"Downloading {PUBLIC_DATASETS[choice][0]}…"):
                folder = download_dataset(choice)
        except DataError as e:
            fail(str(e))
        else:
            load(str(folder), choice)

with folder_tab:
    allowed = server_folders()
    if allowed is None:
        st.info(f"Reading folders on the server is turned off here ({FOLDERS_ENV}=0). Upload a zip instead.")
    else:
        st.caption("For local use: a folder on the machine running Transfer Lab, holding one folder per class "
                   f"(or train/ + validation/). Turn this off on a shared server with {FOLDERS_ENV}=0.")
        folder = st.text_input("Folder path", key="server_folder", placeholder="/home/me/photos")
        if st.button("Use this folder", key="use_folder", disabled=not folder.strip()):
            try:
                path = check_server_folder(folder)
            except DataError as e:
                fail(str(e))
            else:
                load(str(path), path.name or str(path))

# -- split settings --------------------------------------------------------------------------------
data = st.session_state.get("data")
own_splits = data is not None and data.layout == "splits"
own_test = data is not None and data.test_from == "folder"
val_col, test_col = st.columns(2)
pct = val_col.select_slider("Validation share (used when the data has no validation/ folder)",
                            list(range(5, 55, 5)), value=int(round(cfg.val_split * 100)) // 5 * 5 or 5,
                            key="w_val_split", format_func=lambda v: f"{v}%", disabled=own_splits)
test_pct = test_col.select_slider("Held-out test share (used when the data has no test/ folder)", list(range(0, 35, 5)),
                                  value=int(round(cfg.test_split * 100)) // 5 * 5, key="w_test_split",
                                  format_func=lambda v: f"{v}%", disabled=own_test,
                                  help="Kept aside from training and early stopping, for a final, honest score "
                                       "on the Evaluate page")
if pct / 100 != cfg.val_split or test_pct / 100 != cfg.test_split:
    test_changed = test_pct / 100 != cfg.test_split
    cfg = replace(cfg, val_split=pct / 100, test_split=test_pct / 100)
    st.session_state.config = cfg
    if data is not None and (data.layout == "classes" or (test_changed and not own_test)):
        load(st.session_state.data_path, st.session_state.data_source, st.session_state.get("data_zip_name"))

if st.session_state.get("data_error"):
    st.error(md(st.session_state.data_error))

data = st.session_state.get("data")
if data is None:
    st.info("No dataset yet. Click **Use the sample dataset** to start with the built-in one.")
else:
    st.success(f"**{md(st.session_state.get('data_source', 'dataset'))}**: {data.summary()}")
    cols = st.columns(5)
    cols[0].metric("Classes", len(data.class_names))
    cols[1].metric("Train images", len(data.train))
    cols[2].metric("Validation images", len(data.validation))
    cols[3].metric("Test images", len(data.test) if data.test is not None else 0)
    cols[4].metric("Skipped files", len(data.skipped))
    if data.layout == "classes":
        test_text = f" and {cfg.test_split:.0%} kept aside as a test split" if data.test is not None else ""
        st.info(f"Your data has no validation/ folder, so {cfg.val_split:.0%} of each class is held out for "
                f"validation{test_text} (seed {cfg.seed}). Every run and comparison uses this same split.")
    else:
        has_test = " and test/" if data.test_from == "folder" else ""
        carved = (f" {cfg.test_split:.0%} of each class in train/ is kept aside as a test split (seed {cfg.seed})."
                  if data.test_from == "fraction" else "")
        st.info(f"Using your own train/ and validation/{has_test} folders as they are.{carved}")
    for w in data.warnings:
        st.warning(md(w.replace(" (--class-weights)", " (switch on Class weights below)")), icon=":material/balance:")

    weights_on = st.toggle("Class weights: count each class's mistakes by how rare the class is (for "
                           "imbalanced data)", value=cfg.class_weights, key="w_class_weights")
    if weights_on != cfg.class_weights:
        st.session_state.config = cfg = replace(cfg, class_weights=weights_on)
    if cfg.class_weights:
        st.caption("Weights used in training: " + ", ".join(
            f"{name} {w:.2f}" for name, w in zip(data.class_names, data.class_weights().values())))

    st.markdown("**Images per class**")
    st.dataframe(samples.report_frame(data), hide_index=True, width="stretch",
                 column_config={"median_size": "median size", "formats": st.column_config.TextColumn(width="large")})
    st.plotly_chart(charts.class_balance_figure(samples.counts_frame(data)), width="stretch")

    st.markdown("**Training images per class** (the magnifier under a photo enlarges it)")

    @st.dialog("Image", width="large")
    def enlarge(path: str) -> None:
        try:
            st.image(samples.preview_image(path))
        except ImageDecodeError as e:
            st.error(f"{data.display(path)}: {e.reason}")
            return
        fmt, w, h = data.file_info.get(path, (None, 0, 0))
        st.caption(f"{md(data.display(path))} · {fmt or '?'} · {w}×{h} px")

    # Kept in this session only (not st.cache_data, which every session shares): people's photos stay theirs.
    fingerprint = data.fingerprint()
    if st.session_state.get("data_thumbs", (None,))[0] != fingerprint:
        st.session_state.data_thumbs = (fingerprint, samples.thumbnail_items(data, per_class=8, size=96))
    for ci, (name, items) in enumerate(st.session_state.data_thumbs[1].items()):
        st.caption(f"{md(name)} ({data.train.counts()[name]} train)")
        grid = st.columns(8)
        for i, (path, img) in enumerate(items):
            with grid[i]:
                st.image(img, width=80)
                if st.button("", key=f"thumb_{ci}_{i}", icon=":material/zoom_in:", help=f"Enlarge {data.display(path)}"):
                    enlarge(path)

    if data.skipped:
        st.warning(f"{len(data.skipped)} file(s) were skipped and will not be used. Reasons below.")
        st.download_button("Download the skipped files as CSV", data.skipped_csv(), file_name="skipped.csv",
                           mime="text/csv", key="skipped_csv", icon=":material/download:")
        st.dataframe(samples.skipped_frame(data), hide_index=True, width="stretch")
    if data.notes:
        st.markdown(f"**Notes** ({len(data.notes)}): files used or left out on purpose")
        st.caption("  \n".join(md(n) for n in data.notes))
    st.page_link("pages/2_base.py", label="Next: choose a pretrained base →", icon=":material/layers:")
    # the next page reads the base's layers: start on them while the user looks at the data
    cfg = st.session_state.config
    baseinfo.prefetch(cfg.base, cfg.resolved_image_size(), cfg.alpha, cfg.weights)

# -- privacy -------------------------------------------------------------------------------------------
with st.expander("Your data on this server"):
    size = ws.size_bytes()
    st.write(f"Your uploads, unpacked zips and runs are kept in a workspace of your own ({size / 2**20:,.1f} MB "
             "now). Only this page's address (`?ws=…`) reaches it; other visitors never see it.")
    if st.button("Delete my data", key="delete_data", icon=":material/delete_forever:"):
        for handle in (st.session_state.get("run"), st.session_state.get("compare")):
            if handle is not None and hasattr(handle, "request_stop"):
                handle.request_stop()  # a run still writing into the workspace stops at its next batch
        ws.delete()
        for key in DATA_KEYS + ("cls_message",):
            st.session_state.pop(key, None)
        st.session_state.workspace = Workspace.open(None)
        st.query_params["ws"] = st.session_state.workspace.id
        st.session_state.data_deleted = True
        st.session_state.data_deletions = deletions + 1
        st.rerun()
