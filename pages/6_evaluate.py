"""Evaluate & export: held-out scores, mistakes and where the model looked, predictions, downloads."""
import json
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from core import charts
from core.bases import base_label
from core.evaluate import evaluate_model, export_model, export_zip, human_size
from core.export import ModelFileError, load_model
from core.gradcam import gradcam_or_reason, overlay
from core.images import ImageDecodeError, decode_image
from core.predict import model_image_size, predict_files, predictions_csv

GALLERY = 8  # most confident mistakes shown
THUMB = 160  # pixels of gallery and prediction images

st.title("Evaluate & export")
st.write("See where the trained model goes wrong and where it looked, try it on new images, and take it "
         "elsewhere (`model.keras` takes raw 0–255 RGB images; the class names travel inside it and in `labels.json`).")


class Source:
    """The model this page works on: a run's (trained here or reopened) or an uploaded .keras file."""

    def __init__(self, key, label, model, class_names, config=None, data=None, run_dir=None, run_id=None):
        self.key, self.label, self.model, self.class_names = key, label, model, list(class_names)
        self.config, self.data, self.run_dir, self.run_id = config, data, run_dir, run_id


def run_source():
    handle = st.session_state.get("run")
    try:
        result = getattr(handle, "result", None)
        model = getattr(result, "model", None)
    except ModelFileError as e:
        st.error(f"The run's model cannot be loaded: {e}")
        return None
    if model is None:
        return None
    what = f"{base_label(result.config)}, weights **{result.config.weights_label()}**"
    if getattr(result, "best_val_accuracy", None) is not None:
        what += f", best validation accuracy {result.best_val_accuracy:.1%} (epoch {result.best_epoch})"
    return Source(f"run:{result.run_id}", f"Model of run {result.run_id}: {what}.", model, result.class_names,
                  result.config, getattr(result, "data", None) or st.session_state.get("data"),
                  getattr(result, "run_dir", None), result.run_id)


def uploaded_source():
    up = st.file_uploader("A `.keras` model file (loaded in Keras safe mode: a file carrying Python code is refused, "
                          "never run)", type=["keras"], key="model_upload")
    if up is None:
        return None
    key = f"upload:{up.file_id}"
    cache = st.session_state.setdefault("uploaded_models", {})
    if key not in cache:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / Path(up.name).name
            path.write_bytes(up.getvalue())
            try:
                with st.spinner(f"Loading {up.name}…"):
                    cache.clear()  # one uploaded model at a time
                    cache[key] = load_model(path)
            except ModelFileError as e:
                cache[key] = str(e)
    loaded = cache[key]
    if isinstance(loaded, str):
        st.error(loaded)
        return None
    model, names = loaded
    data = st.session_state.get("data")
    return Source(key, f"Uploaded model **{up.name}** ({human_size(up.size)}): classes {', '.join(names)}.",
                  model, names, None, data)


def gradcam_for(src):
    cams = st.session_state.setdefault("gradcams", {})
    if src.key not in cams:
        cams.clear()
        cams[src.key] = gradcam_or_reason(src.model)
    return cams[src.key]


def cam_images(src, images):
    """Grad-CAM overlays of model-size uint8 images, or (None, reason)."""
    cam, reason = gradcam_for(src)
    if cam is None:
        return None, reason
    try:
        heat, _ = cam.heatmaps(images)
    except Exception as e:  # a model shape Grad-CAM cannot follow: say so, keep the page
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return [overlay(img, h) for img, h in zip(images, heat)], None


def show_prediction(src, pred, image_bytes=None, caption=None, key=""):
    """One image: the picture, Grad-CAM overlay, and its top classes as bars."""
    import pandas as pd

    a, b, c = st.columns([1, 1, 2])
    a.image(image_bytes if image_bytes is not None else pred.image, width=THUMB, caption=caption or "image")
    overlays, reason = cam_images(src, pred.image[None])
    if overlays is not None:
        b.image(overlays[0], width=THUMB, caption=f"where it looked for {pred.top[0][0]}")
    else:
        b.caption(f"Grad-CAM not available: {reason}")
    name, p = pred.top[0]
    c.markdown(f"**{pred.path}** → **{name}** ({p:.1%})")
    rows = pd.DataFrame([{"class": n, "probability": q} for n, q in pred.top])
    c.plotly_chart(charts.probability_figure(rows), width="stretch", key=f"prob_{key}")


if st.session_state.get("run") is None and st.session_state.get("workspace") is not None:
    from core.experiments import latest_handle  # after a browser refresh: the workspace's newest run

    st.session_state.run = latest_handle(st.session_state.workspace)
src = None
run_src = run_source()
choices = (["The trained run"] if run_src is not None else []) + ["A .keras file"]
if run_src is None:
    last = st.session_state.get("run")
    last = last.snapshot() if hasattr(last, "snapshot") else None
    if last is not None and last.status == "failed":
        st.warning(f"The last run failed, so it has no model ({last.message}).")
    st.info("No trained model yet: train one first, reopen one on the Runs page, or load a `.keras` file below.")
    st.page_link("pages/4_train.py", label="Go to Train", icon=":material/show_chart:")
choice = st.radio("Model", choices, horizontal=True, key="w_model_source") if len(choices) > 1 else choices[0]
src = run_src if choice == "The trained run" else uploaded_source()

if src is not None:
    st.caption(src.label)
    size = model_image_size(src.model)

    # -- Evaluate ---------------------------------------------------------------------------------------
    st.subheader("How well it does")
    data = src.data
    if data is not None and not set(data.class_names) <= set(src.class_names):
        st.info(f"The dataset's classes ({', '.join(data.class_names)}) are not the model's "
                f"({', '.join(src.class_names)}): evaluation needs the same classes. Predict below still works.")
        data = None
    ev = None
    if data is None:
        st.caption("No dataset to score: choose one on the Data page.")
    else:
        splits = (["test"] if data.test is not None and len(data.test) else []) + ["validation"]
        split = st.radio("Score on", splits, horizontal=True, key="w_eval_split") if len(splits) > 1 else splits[0]
        n = len(getattr(data, split))
        if split == "test":
            st.caption(f"Scored on the held-out **test** split ({n} images): never seen in training nor used to "
                       "pick the best epoch, so this is the fair estimate.")
        else:
            st.caption(f"Scored on the **validation** split ({n} images)"
                       + (". There is no test split; these images also picked the best epoch, so the score is a "
                          "little optimistic (hold out a test split on the Data page for a fair one)."
                          if len(splits) == 1 else "."))
        if src.run_id is None:
            st.caption("An uploaded model may have trained on some of these images; then its score here is too high.")
        cache = st.session_state.setdefault("evaluations", {})
        key = ((src.run_id or src.key), split)
        if key not in cache:
            try:
                with st.spinner(f"Predicting every {split} image…"):
                    cache[key] = evaluate_model(src.model, getattr(data, split), src.class_names, split)
            except Exception as e:  # a file changed since the data was checked, or a model that cannot run here
                st.error(f"Could not evaluate: {e}")
        ev = cache.get(key)
    if ev is not None:
        mistakes = ev.mistake_indices()
        m1, m2, m3 = st.columns(3)
        m1.metric(f"{ev.split.capitalize()} accuracy", f"{ev.accuracy:.1%}", help=f"{len(ev.y_true)} images")
        m2.metric("Images", len(ev.y_true))
        m3.metric("Mistakes", len(mistakes))
        a, b = st.columns([3, 2])
        with a:
            norm = st.toggle("Row-normalised (share of each true class)", key="w_cm_norm")
            st.plotly_chart(charts.confusion_figure(ev.confusion_frame(normalize=norm), normalized=norm),
                            width="stretch", key="confusion")
        with b:
            st.markdown("**Per class**")
            st.dataframe(ev.per_class(), hide_index=True, width="stretch", column_config={
                c: st.column_config.NumberColumn(format="%.2f") for c in ("precision", "recall", "f1")})
            st.caption("Precision: of the images predicted as the class, the share that are. Recall: of the "
                       "class's images, the share found. F1: their harmonic mean. Support: images of the class.")

        st.subheader("Most confident mistakes")
        if not mistakes:
            st.success(f"No mistakes on the {len(ev.y_true)} {ev.split} images.")
        else:
            shown = mistakes[:GALLERY]
            st.caption(f"{len(mistakes)} mistake(s); the {len(shown)} the model was surest about, with where it "
                       "looked (Grad-CAM for the predicted class: red is where the evidence was).")
            images, ok = [], []
            for i in shown:
                try:
                    images.append(decode_image(ev.paths[i], size))
                    ok.append(i)
                except ImageDecodeError:
                    continue
            overlays, reason = (cam_images(src, np.stack(images)) if images else (None, None))
            if overlays is None and reason:
                st.caption(f"Grad-CAM not available for this model: {reason}")
            cols = st.columns(4)
            for j, i in enumerate(ok):
                with cols[j % 4]:
                    st.image(overlays[j] if overlays is not None else images[j], width="stretch")
                    st.markdown(f"true **{ev.class_names[ev.y_true[i]]}** · predicted "
                                f"**{ev.class_names[ev.y_pred[i]]}** ({ev.probs[i, ev.y_pred[i]]:.0%})")
                    st.caption(Path(ev.paths[i]).name)
            with st.expander(f"All {len(mistakes)} mistakes as a table"):
                table = ev.mistakes()
                table["file"] = [Path(f).name for f in table["file"]]
                st.dataframe(table, hide_index=True, width="stretch")

    # -- Predict ----------------------------------------------------------------------------------------
    st.subheader("Try it on new images")
    up_tab, cam_tab, pick_tab = st.tabs(["Upload", "Camera", "From the dataset"])
    with up_tab:
        uploads = st.file_uploader("Images to classify (any format the Data page takes)", accept_multiple_files=True,
                                   key="predict_files")
        if uploads:
            preds, failures = predict_files(src.model, src.class_names, [u.getvalue() for u in uploads], top=5,
                                            names=[u.name for u in uploads])
            for name, reason in failures:
                st.error(f"{name}: {reason}")
            by_name = {u.name: u for u in uploads}
            for k, pred in enumerate(preds):
                show_prediction(src, pred, by_name[pred.path].getvalue(), key=f"up{k}")
            if len(preds) > 1:
                st.download_button(f"Download predictions.csv ({len(preds)} images)", predictions_csv(preds),
                                   file_name="predictions.csv", mime="text/csv", key="dl_predictions")
                st.caption("The same columns as `python -m core predict`: path, class, probability "
                           "(top 5 rows per image, best first).")
    with cam_tab:
        shot = st.camera_input("Take a photo", key="predict_camera")
        if shot is not None:
            preds, failures = predict_files(src.model, src.class_names, [shot.getvalue()], top=5, names=["camera photo"])
            for name, reason in failures:
                st.error(f"{name}: {reason}")
            for pred in preds:
                show_prediction(src, pred, shot.getvalue(), key="camera")
    with pick_tab:
        pool = data if data is not None else None
        if pool is None:
            st.caption("No dataset loaded: choose one on the Data page.")
        else:
            files = [(s, p, y) for s in ("test", "validation", "train") if getattr(pool, s, None) is not None
                     for p, y in zip(getattr(pool, s).paths, getattr(pool, s).labels)]
            labels = [f"{s}: {pool.class_names[y]}/{Path(p).name}" for s, p, y in files]
            pick = st.selectbox("An image of the dataset", range(len(files)), format_func=lambda i: labels[i],
                                index=None, placeholder="Choose an image…", key="predict_pick")
            if pick is not None:
                s, path, y = files[pick]
                preds, failures = predict_files(src.model, src.class_names, [path], top=5, names=[Path(path).name])
                for name, reason in failures:
                    st.error(f"{name}: {reason}")
                for pred in preds:
                    show_prediction(src, pred, caption=f"true class: {pool.class_names[y]} ({s})", key="pick")

    # -- Export -----------------------------------------------------------------------------------------
    st.subheader("Download")

    @st.cache_data(max_entries=4, show_spinner="Saving the model…")
    def model_bytes(key: str, run_dir, _model, class_names: tuple) -> bytes:
        from core.data import cache_dir
        from core.export import save_model

        if run_dir and (Path(run_dir) / "model.keras").exists():
            return (Path(run_dir) / "model.keras").read_bytes()
        out = cache_dir() / "exports" / key.replace(":", "_")
        out.mkdir(parents=True, exist_ok=True)
        return save_model(_model, out / "model.keras", list(class_names)).read_bytes()

    blob = model_bytes(src.key, src.run_dir, src.model, tuple(src.class_names))
    labels_json = json.dumps({"class_names": src.class_names}, indent=2, ensure_ascii=False) + "\n"
    d1, d2, d3 = st.columns(3)
    d1.download_button("Download model.keras", blob, file_name="model.keras", mime="application/zip",
                       type="primary", key="dl_model")
    d2.download_button("Download labels.json", labels_json, file_name="labels.json", mime="application/json",
                       key="dl_labels")
    if src.config is not None:
        d3.download_button("Download config.json", src.config.to_json() + "\n", file_name="config.json",
                           mime="application/json", key="dl_config")
    st.caption(f"model.keras is {human_size(len(blob))}. Load it with `keras.saving.load_model('model.keras')`; "
               "class order: " + ", ".join(src.class_names) + ". `python -m core train --config config.json "
               "--data PATH --out DIR` reproduces the run.")

    with st.container(border=True):
        st.markdown("**More formats**: TensorFlow Lite for phones and small boards, a standalone `train.py` "
                    "in plain Keras, and a zip of everything")
        quant = st.checkbox("Also a dynamic-range quantised .tflite (8-bit weights, about 4× smaller)", key="w_quant")
        exports = st.session_state.setdefault("exports", {})
        ekey = (src.key, quant)
        if st.button("Prepare the files", key="export_btn"):
            from core.data import cache_dir
            from core.evaluate import sample_inputs

            out = Path(src.run_dir) if src.run_dir else cache_dir() / "exports" / src.key.replace(":", "_")
            formats = ["keras", "tflite"] + (["script"] if src.config is not None else [])
            check = None
            if ev is not None:
                paths = ev.paths[:32]
                from core.data import load_arrays

                try:
                    check = load_arrays(paths, size)
                except Exception:
                    check = None
            if check is None:
                check = sample_inputs(size, 8)
            try:
                with st.spinner("Converting to TensorFlow Lite and checking it in LiteRT…"):
                    exports[ekey] = export_model(src.model, src.class_names, out, formats, src.config, quant, check,
                                                 src.run_id or "")
            except Exception as e:  # conversion of an unusual uploaded model: say why, keep the page
                st.error(f"Export failed: {e}")
        files = exports.get(ekey)
        if files:
            import pandas as pd

            st.dataframe(pd.DataFrame([{"file": f.name, "size": human_size(f.size), "what": f.note} for f in files]),
                         hide_index=True, width="stretch")
            for f in files:
                if f.parity and f.parity["top_agree"] is not None and f.parity["top_agree"] < 1:
                    st.warning(f"{f.name} picks another class than the Keras model on "
                               f"{1 - f.parity['top_agree']:.0%} of {f.parity['images']} images (probabilities differ "
                               f"by up to {f.parity['max_abs_diff']:.2f}): close calls flip when weights are "
                               "quantised. Prefer the float model.tflite, or check on your own images.")
            if src.run_dir:
                st.caption(f"Also written into the run folder `{src.run_dir}`.")
            if src.config is None:
                st.caption("train.py and config.json need the experiment's config: an uploaded model file has none.")
            extra = [f for f in files if f.name.endswith((".tflite", ".py"))]
            cols = st.columns(len(extra) + 1)
            cols[0].download_button("Download all (zip)", export_zip(files), file_name="transfer_lab_export.zip",
                                    mime="application/zip", type="primary", key="dl_zip")
            for col, f in zip(cols[1:], extra):
                col.download_button(f"Download {f.name} ({human_size(f.size)})", f.path.read_bytes(),
                                    file_name=f.name, key=f"dl_{f.name}")
