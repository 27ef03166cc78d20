"""Base & layers: the pretrained network, its weights, and which layers stay locked."""
from dataclasses import replace

import streamlit as st

from core import samples
from core.bases import BASES, get_spec, suggested_cuts
from core.config import ConfigError
from core.model import from_scratch_warning
from core.experiments import (check_weights_file, imagenet_problem, layer_rows,
                              lock_param_counts)

st.title("Base & layers")
st.write("Choose the pretrained network your model starts from and lock the layers that should keep "
         "what they already know; the head you add next learns your classes on top.")

cfg = st.session_state.config
data = st.session_state.get("data")
num_classes = len(data.class_names) if data is not None else 2

WEIGHTS = {"imagenet": "ImageNet (download)", "file": "A weights file I upload",
           "none": "None (from scratch)"}
LOCKS = {"all": "Lock all base layers (train only the head)", "up-to": "Lock up to a layer",
         "top": "Lock all but the top N layers", "none": "Lock nothing (fine-tune the whole base)"}


@st.cache_resource(max_entries=6, show_spinner="Building the base's layers…")
def architecture(name: str, size: int, alpha: float):
    """The base with random weights, only read (layer table, counts); never trained or mutated."""
    from core.bases import build_base

    return build_base(name, size, alpha, "none")


@st.cache_resource(max_entries=16, show_spinner="Checking whether ImageNet weights can be had…")
def imagenet_check(name: str, size: int, alpha: float):
    return imagenet_problem(name, size, alpha)


@st.cache_resource(max_entries=16, show_spinner="Loading the weights file into the base…")
def file_check(name: str, size: int, alpha: float, path: str, stamp: int):
    return check_weights_file(name, size, alpha, path)


def init(key, value):
    if key not in st.session_state:
        st.session_state[key] = value


def reset_base_widgets():
    spec = get_spec(st.session_state.w_base)
    st.session_state.w_alpha = 1.0 if (not spec.alphas or 1.0 in spec.alphas) else spec.alphas[-1]
    st.session_state.w_size = spec.default_size
    st.session_state.w_cut = ""
    st.session_state.w_lock_layer = None


init("w_base", cfg.base)
init("w_alpha", float(cfg.alpha))
init("w_size", cfg.resolved_image_size())
weights_kind = "imagenet" if cfg.weights == "imagenet" else ("none" if cfg.weights == "none" else "file")
init("w_weights", weights_kind)
init("w_cut", cfg.cut or "")
mode = cfg.freeze.split(":")[0]
init("w_lock", mode)
init("w_lock_layer", cfg.freeze[6:] if mode == "up-to" else None)
init("w_lock_top", int(cfg.freeze[4:]) if mode == "top" else 20)
init("w_train_bn", cfg.train_batchnorm)

c1, c2, c3 = st.columns(3)
base_name = c1.selectbox("Base network", list(BASES), format_func=lambda n: BASES[n].label, key="w_base",
                         on_change=reset_base_widgets)
spec = get_spec(base_name)
if spec.alphas:
    if st.session_state.w_alpha not in spec.alphas:
        st.session_state.w_alpha = spec.alphas[-1] if 1.0 not in spec.alphas else 1.0
    alpha = c2.selectbox("Width (alpha)", spec.alphas, key="w_alpha",
                         help="MobileNet width multiplier: smaller is faster, larger is more accurate.")
else:
    c2.selectbox("Width (alpha)", [1.0], disabled=True, key="w_alpha_fixed", help=f"{spec.label} has no width multiplier.")
    alpha = 1.0
size = int(c3.number_input(f"Image size (px, at least {spec.min_size})", min_value=spec.min_size, max_value=1024,
                           step=16, key="w_size", help=f"{spec.label} was trained at {spec.default_size} px."))

st.subheader("Weights")
kind = st.radio("Start from", list(WEIGHTS), format_func=WEIGHTS.get, key="w_weights", horizontal=True)
weights = cfg.weights
if kind == "imagenet":
    problem = imagenet_check(base_name, size, alpha)
    if problem:
        st.error(f"**ImageNet weights are not available here.** {problem}.  \n"
                 "Pick one of the other two: upload a weights file for this base, or train from scratch.")
        b1, b2 = st.columns(2)
        b1.button("Train from scratch (weights none, all layers unlocked)", type="primary",
                  on_click=lambda: st.session_state.update(w_weights="none", w_lock="none"))
        b2.button("Upload a weights file", on_click=lambda: st.session_state.update(w_weights="file"))
    else:
        st.success(f"ImageNet weights for {spec.label} are available.")
    weights = "imagenet"
elif kind == "none":
    st.info("**None (from scratch)**: the base starts with random weights and learns only from your images. "
            "Expect far lower accuracy than with pretrained weights on a small dataset; every run made this "
            "way is labelled *none (from scratch)*.")
    weights = "none"
else:
    what = f"{spec.label}" + (f", alpha {alpha:g}" if spec.alphas else "") + f", no top (e.g. *_no_top.weights.h5)"
    up = st.file_uploader(f"Weights file for {what}", key="w_weights_upload")
    if up is not None:
        path = samples.save_upload(up.name, up.getvalue(), "weights", st.session_state.get("workspace"))
        st.session_state.weights_file = str(path)
    path = st.session_state.get("weights_file")
    if path:
        from pathlib import Path

        p = Path(path)
        problem = file_check(base_name, size, alpha, path, p.stat().st_mtime_ns if p.exists() else 0)
        if problem:
            st.error(f"**This weights file cannot be used.** {problem}")
        else:
            st.success(f"Weights file **{p.name}** fits {spec.label} at {size} px.")
        weights = path
    else:
        st.warning(f"No weights file uploaded yet; the experiment keeps weights **{cfg.weights_label()}** "
                   "until you upload one.")

base = architecture(base_name, size, float(alpha))

st.subheader("Layers")
cuts = [name for name, _ in suggested_cuts(base, base_name)]
shapes = {name: shape for name, shape in suggested_cuts(base, base_name)}
if st.session_state.w_cut not in [""] + cuts:
    st.session_state.w_cut = ""
cut = st.selectbox("Attach the head at (cut layer)", [""] + cuts, key="w_cut",
                   format_func=lambda n: f"{base.layers[-1].name} (the last layer)" if not n else f"{n} → {shapes[n]}",
                   help="Cutting at an earlier block keeps more general features and a smaller base.")
kept = [layer.name for layer in base.layers[: (([l.name for l in base.layers].index(cut)) if cut else len(base.layers) - 1) + 1]]

l1, l2 = st.columns([2, 1])
lock = l1.radio("Locked layers", list(LOCKS), format_func=LOCKS.get, key="w_lock")
freeze = "all"
if lock == "up-to":
    weighted = [n for n in kept]
    if st.session_state.w_lock_layer not in weighted:
        st.session_state.w_lock_layer = weighted[int(len(weighted) * 0.7)]
    layer = l2.selectbox("Lock every layer up to and including", weighted, key="w_lock_layer")
    freeze = f"up-to:{layer}"
elif lock == "top":
    n = l2.number_input("Leave this many top layers unlocked", min_value=1, max_value=len(kept), step=1,
                        key="w_lock_top")
    freeze = f"top:{int(n)}"
elif lock == "none":
    freeze = "none"
train_bn = st.checkbox("Let unlocked BatchNorm layers train too (usually worse on small data)", key="w_train_bn")

new = replace(cfg, base=base_name, alpha=float(alpha), image_size=size, weights=weights, freeze=freeze,
              cut=cut or None, train_batchnorm=bool(train_bn))
st.session_state.config = new

try:
    counts = lock_param_counts(base, new, num_classes)
    rows = layer_rows(base, new)
except ConfigError as e:
    st.error(str(e))
else:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Trainable parameters", f"{counts['trainable']:,}")
    m2.metric("Locked parameters", f"{counts['locked']:,}")
    m3.metric("Head parameters", f"{counts['head']:,}", help="Pooling, dense layers and the output, as set on the next page.")
    m4.metric("Base output (H, W, C)", " × ".join(str(d) for d in counts["feature_shape"]))
    n_train = sum(r["state"] == "trainable" for r in rows)
    st.caption(f"{len(rows)} layers in {spec.label}: {n_train} trainable, "
               f"{sum(r['state'].startswith('locked') for r in rows)} locked, "
               f"{sum(r['state'] == 'cut off' for r in rows)} cut off. Counts include the head.")
    import pandas as pd

    table = pd.DataFrame(rows)[["index", "name", "type", "output_shape", "params", "trainable", "state", "block"]]
    st.dataframe(table, hide_index=True, width="stretch", height=360,
                 column_config={"params": st.column_config.NumberColumn("parameters", format="localized"),
                                "output_shape": "output shape"})

if from_scratch_warning(new):
    st.warning(from_scratch_warning(new))
for problem in new.problems():
    st.error(problem)
st.page_link("pages/3_head.py", label="Next: shape the head →", icon=":material/tune:")
