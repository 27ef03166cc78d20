"""Evaluate & export: confusion matrix, predictions on new images, downloads."""
import json
from pathlib import Path

import streamlit as st

from core import charts
from core.evaluate import evaluate_model, predict_uploads

st.title("Evaluate & export")
st.write("See where the trained model goes wrong, try it on new images, and download it "
         "(`model.keras` takes raw 0–255 RGB images; the class names travel inside it and in `labels.json`).")

handle = st.session_state.get("run")
result = getattr(handle, "result", None)
data = st.session_state.get("data")

if result is None or result.model is None:
    st.info("No trained model yet: train one first.")
    st.page_link("pages/4_train.py", label="Go to Train", icon=":material/show_chart:")
else:
    st.caption(f"Model of run {result.run_id}: {result.config.base}, weights **{result.config.weights_label()}**, "
               f"best validation accuracy {result.best_val_accuracy:.1%} (epoch {result.best_epoch}).")
    run_data = result.data or data
    splits = ["validation"] + (["test"] if run_data is not None and run_data.test is not None else [])
    split = st.radio("Evaluate on", splits, horizontal=True, key="w_eval_split") if len(splits) > 1 else "validation"

    key = (result.run_id, split)
    cache = st.session_state.setdefault("evaluations", {})
    if key not in cache and run_data is not None:
        with st.spinner(f"Predicting every {split} image…"):
            cache[key] = evaluate_model(result.model, getattr(run_data, split), result.class_names, split)
    ev = cache.get(key)
    if ev is not None:
        st.metric(f"{split.capitalize()} accuracy", f"{ev.accuracy:.1%}", help=f"{len(ev.y_true)} images")
        a, b = st.columns([3, 2])
        a.plotly_chart(charts.confusion_figure(ev.confusion_frame()), width="stretch")
        with b:
            st.markdown("**Per class**")
            st.dataframe(ev.per_class(), hide_index=True, width="stretch", column_config={
                c: st.column_config.NumberColumn(format="%.2f") for c in ("precision", "recall", "f1")})
            mistakes = ev.mistakes()
            if len(mistakes):
                st.markdown(f"**{len(mistakes)} mistake(s)**, most confident first")
                mistakes["file"] = [Path(f).name for f in mistakes["file"]]
                st.dataframe(mistakes, hide_index=True, width="stretch")

    st.subheader("Try it on new images")
    uploads = st.file_uploader("Images to classify", accept_multiple_files=True, key="predict_files")
    if uploads:
        rows, failures = predict_uploads(result.model, result.class_names,
                                         [(u.name, u.getvalue()) for u in uploads], top=3)
        for name, reason in failures:
            st.error(f"{name}: {reason}")
        if rows:
            import pandas as pd

            df = pd.DataFrame(rows)
            for name, group in df.groupby("file", sort=False):
                left, right = st.columns([1, 3])
                upload = next(u for u in uploads if u.name == name)
                left.image(upload.getvalue(), width=120)
                top = group.iloc[0]
                right.markdown(f"**{name}** → **{top['class']}** ({top['probability']:.1%})")
                right.plotly_chart(charts.probability_figure(group), width="stretch", key=f"prob_{name}")

    st.subheader("Download")

    @st.cache_data(max_entries=4, show_spinner="Saving the model…")
    def model_bytes(run_id: str, run_dir, _model, class_names: tuple) -> bytes:
        from core.data import cache_dir
        from core.export import save_model

        if run_dir and (Path(run_dir) / "model.keras").exists():
            return (Path(run_dir) / "model.keras").read_bytes()
        out = cache_dir() / "exports" / run_id
        out.mkdir(parents=True, exist_ok=True)
        return save_model(_model, out / "model.keras", list(class_names)).read_bytes()

    blob = model_bytes(result.run_id, getattr(result, "run_dir", None), result.model, tuple(result.class_names))
    labels = json.dumps({"class_names": result.class_names}, indent=2, ensure_ascii=False) + "\n"
    d1, d2, d3 = st.columns(3)
    d1.download_button("Download model.keras", blob, file_name="model.keras", mime="application/zip",
                       type="primary", key="dl_model")
    d2.download_button("Download labels.json", labels, file_name="labels.json", mime="application/json",
                       key="dl_labels")
    d3.download_button("Download config.json", result.config.to_json() + "\n", file_name="config.json",
                       mime="application/json", key="dl_config")
    st.caption(f"model.keras is {len(blob) / 2**20:.1f} MiB. Load it with "
               "`keras.saving.load_model('model.keras')`; class order: " + ", ".join(result.class_names) + ".")
