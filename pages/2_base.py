"""Base & layers: the pretrained network, its weights, and which layers stay locked."""
from dataclasses import replace

import streamlit as st

from core import samples
import hashlib

from core.baseinfo import base_facts
from core.bases import BASES, cut_choices, get_spec
from core.config import ConfigError
from core.freeze import (FreezeSpec, filter_rows, layer_rows, lock_param_counts, lockable_names,
                         unlocked_batchnorm)
from core.head import head_plan, mib
from core.model import from_scratch_warning

st.title("Base & layers")
st.write("Choose the pretrained network your model starts from and lock the layers that should keep "
         "what they already know; the head you add next learns your classes on top.")

cfg = st.session_state.config
data = st.session_state.get("data")
num_classes = len(data.class_names) if data is not None else 2

WEIGHTS = {"imagenet": "ImageNet (download)", "file": "A weights file I upload",
           "none": "None (from scratch)"}
LOCKS = {"all": "Lock all base layers (train only the head)", "up-to": "Lock up to a layer",
         "top": "Lock all but the top N layers", "unlock": "Choose layer by layer (tick in the table)",
         "none": "Lock nothing (fine-tune the whole base)"}


def facts(name: str, size: int, alpha: float, weights: str = "none"):
    """The base's layer facts and why ``weights`` cannot be used (computed once, outside the app)."""
    with st.spinner("Reading the base's layers and checking its weights…"):
        return base_facts(name, size, alpha, weights)


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
init("w_unlock_spec", cfg.freeze)  # what the per-layer table starts from
init("w_filter", "")
init("w_types", [])


def lock_changed():
    # the per-layer table starts from the lock shown until now
    if st.session_state.w_lock == "unlock":
        st.session_state.w_unlock_spec = st.session_state.config.freeze

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
                           step=16, key="w_size", help=f"{spec.label}: {spec.sizes_text()}."))
st.caption(f"**{spec.label}** (keras.applications.{spec.builder}): {spec.sizes_text()}. Preprocessing, built into "
           f"the model as a layer so it takes raw RGB 0–255: {spec.preprocess_text}.")

st.subheader("Weights")
kind = st.radio("Start from", list(WEIGHTS), format_func=WEIGHTS.get, key="w_weights", horizontal=True)
weights = cfg.weights
if kind == "imagenet":
    problem = facts(base_name, size, float(alpha), "imagenet")[1]
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
        problem = facts(base_name, size, float(alpha), path)[1]
        if problem:
            st.error(f"**This weights file cannot be used.** {problem}")
        else:
            st.success(f"Weights file **{p.name}** fits {spec.label} at {size} px.")
        weights = path
    else:
        st.warning(f"No weights file uploaded yet; the experiment keeps weights **{cfg.weights_label()}** "
                   "until you upload one.")

base = facts(base_name, size, float(alpha))[0]

st.subheader("Layers")
choices = cut_choices(base, base_name)
shapes = {name: shape for name, shape, _ in choices}
suggested = {name for name, _, marked in choices if marked}
last_name = base.layers[-1].name
if st.session_state.w_cut not in [""] + list(shapes) or st.session_state.w_cut == last_name:
    st.session_state.w_cut = ""


def cut_label(name):
    if not name:
        return f"{last_name} (the last layer) → {' × '.join(map(str, shapes.get(last_name, ())))}"
    return f"{'★ ' if name in suggested else ''}{name} → {' × '.join(map(str, shapes[name]))}"


cut = st.selectbox("Attach the head at (cut layer)", [""] + [n for n in shapes if n != last_name], key="w_cut",
                   format_func=cut_label,
                   help="Any layer of the table can carry the head; ★ marks the base's suggested cut points "
                        "(block ends), listed first. Cutting earlier keeps more general features and a smaller base.")
names = [layer.name for layer in base.layers]
kept = names[: (names.index(cut) if cut else len(names) - 1) + 1]

l1, l2 = st.columns([2, 1])
lock = l1.radio("Locked layers", list(LOCKS), format_func=LOCKS.get, key="w_lock", on_change=lock_changed)
freeze = "all"
if lock == "up-to":
    if st.session_state.w_lock_layer not in kept:
        st.session_state.w_lock_layer = kept[int(len(kept) * 0.7)]
    layer = l2.selectbox("Lock every layer up to and including", kept, key="w_lock_layer")
    freeze = f"up-to:{layer}"
elif lock == "top":
    if st.session_state.w_lock_top > len(kept):
        st.session_state.w_lock_top = len(kept)
    n = l2.number_input("Leave this many top layers unlocked", min_value=1, max_value=len(kept), step=1,
                        key="w_lock_top")
    freeze = f"top:{int(n)}"
elif lock == "unlock":
    freeze = st.session_state.w_unlock_spec
    try:
        FreezeSpec.parse(freeze).locked_mask(kept)
    except ConfigError:  # names cut off (or of another base): keep the ones still there
        spec_now = FreezeSpec.parse(freeze) if freeze.startswith("unlock:") else FreezeSpec("all")
        freeze = str(FreezeSpec.from_unlocked(kept, [n for n in spec_now.names if n in kept]))
        st.session_state.w_unlock_spec = freeze
    l2.caption("Tick **trainable** in the table below to unlock a layer, untick to lock it. "
               f"The lock is saved as `{freeze if len(freeze) < 80 else freeze[:77] + '…'}`.")
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
    rows = None
if rows is not None:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Trainable parameters", f"{counts['trainable']:,}")
    m2.metric("Locked parameters", f"{counts['locked']:,}")
    m3.metric("Head parameters", f"{counts['head']:,}", help="Pooling, dense layers and the output, as set on the next page.")
    m4.metric("Base output (H, W, C)", " × ".join(str(d) for d in counts["feature_shape"]),
              help="The output of the cut model: what the head receives.")
    n_train = sum(r["state"] == "trainable" for r in rows)
    st.caption(f"Cut model: {size} × {size} × 3 raw RGB → {spec.label} up to **{cut or last_name}** → "
               f"{' × '.join(str(d) for d in counts['feature_shape'])}. {len(rows)} layers: {n_train} trainable, "
               f"{sum(r['state'].startswith('locked') for r in rows)} locked, "
               f"{sum(r['state'] == 'no weights' for r in rows)} without weights, "
               f"{sum(r['state'] == 'cut off' for r in rows)} cut off. Counts include the head.")

    if len(counts["feature_shape"]) == 3:
        plan = head_plan(counts["feature_shape"], new, num_classes)
        what = (f"Head on this map ({new.pooling_label()} of {plan['inputs']:,} values → "
                f"{' → '.join(str(u) for u in list(new.dense) + [num_classes])}): {plan['params']:,} weights, "
                f"{mib(plan['weights_bytes'])} as float32, {mib(plan['training_bytes'])} while training with "
                f"{new.optimizer} ({plan['optimizer_slots']} slot{'s' if plan['optimizer_slots'] > 1 else ''} per weight)")
        if plan["over_cap"]:
            st.error(f"**This head is too big to train.** {what}; the cap is {plan['cap']:,} weights. Use global "
                     "average pooling (Head page), fewer units, a smaller image size or an earlier cut.")
        elif new.pooling == "flatten" and plan["params"] > 5_000_000:
            st.warning(f"**A big Flatten head.** {what}. Global average pooling would need "
                       f"{head_plan(counts['feature_shape'], replace(new, pooling='gap'), num_classes)['params']:,}.")
        else:
            st.caption(what + ".")

    bn = unlocked_batchnorm(base, new)
    if bn:
        st.warning(f"**{len(bn)} unlocked BatchNorm layer{'s' if len(bn) > 1 else ''} will train** "
                   f"({', '.join(bn[:4])}{', …' if len(bn) > 4 else ''}): their scale and offset follow your small "
                   "dataset and can wreck the pretrained features. Untick the BatchNorm option above to keep them locked.")
    elif new.weights == "none" and any(r["type"] == "BatchNormalization" and r["state"] == "trainable" for r in rows):
        st.caption("Weights none: unlocked BatchNorm layers learn their statistics (there are no pretrained ones to keep).")

    f1, f2 = st.columns([1, 1])
    text = f1.text_input("Filter layers by name, type or block", key="w_filter", placeholder="e.g. block_16 or conv")
    types = f2.multiselect("Layer types", sorted({r["type"] for r in rows}), key="w_types",
                           placeholder="all types")
    shown = filter_rows(rows, text, types)
    for r in shown:
        r["cut"] = "★" if r["suggested_cut"] else ""
    import pandas as pd

    columns = ["index", "name", "type", "output_shape", "params", "trainable", "state", "block", "cut"]
    table = pd.DataFrame(shown, columns=columns)
    column_config = {"params": st.column_config.NumberColumn("parameters", format="localized"),
                     "output_shape": "output shape",
                     "cut": st.column_config.TextColumn("cut", help="★ a suggested cut point (any layer can be cut at)"),
                     "trainable": st.column_config.CheckboxColumn("trainable", help="Unlocked: training may change it")}
    if len(shown) != len(rows):
        st.caption(f"{len(shown)} of {len(rows)} layers shown.")
    height = min(420, 35 * (len(shown) + 1) + 3)  # no empty rows under a short (filtered) table
    if lock == "unlock":
        state = f"{base_name}|{alpha}|{size}|{cut}|{freeze}|{train_bn}|{new.weights == 'none'}|{text}|{types}"
        key = "w_layers_" + hashlib.md5(state.encode()).hexdigest()[:10]  # a fresh table for every lock
        edited = st.data_editor(table, key=key, hide_index=True, width="stretch", height=height,
                                disabled=[c for c in columns if c != "trainable"], column_config=column_config)
        flips = {r["name"]: bool(v) for r, v in zip(shown, edited["trainable"]) if bool(v) != r["trainable"]}
        if flips:
            unlocked = {r["name"] for r in rows if r["trainable"]}
            unlocked |= {n for n, v in flips.items() if v}
            unlocked -= {n for n, v in flips.items() if not v}
            lockable = lockable_names(base, new)
            spec_new = str(FreezeSpec.from_unlocked(lockable, unlocked))
            if {n for n in lockable if n in unlocked} != {r["name"] for r in rows if r["trainable"]}:
                st.session_state.w_unlock_spec = spec_new
                st.rerun()
            by = {r["name"]: r for r in rows}

            def why(row):
                if row["state"] in ("no weights", "cut off"):
                    return "it has no weights to train" if row["state"] == "no weights" else "it lies after the cut"
                return "BatchNorm stays locked unless the BatchNorm option above is on"

            stuck = [f"**{n}** cannot be unlocked: {why(by[n])}." for n, v in flips.items() if v and n not in lockable]
            if stuck:
                st.info("  \n".join(stuck))
    else:
        st.dataframe(table, hide_index=True, width="stretch", height=height, column_config=column_config)

if from_scratch_warning(new):
    st.warning(from_scratch_warning(new))
for problem in new.problems():
    st.error(problem)
st.page_link("pages/3_head.py", label="Next: shape the head →", icon=":material/tune:")
