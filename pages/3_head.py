"""Head & augmentation: the layers that learn your classes, augmentation, optimizer."""
from dataclasses import replace

import streamlit as st

from core import samples
from core.config import MAX_HEAD_PARAMS
from core.head import head_param_estimate

st.title("Head & augmentation")
st.write("Shape the small network that sits on the base and learns your classes: pooling, dense layers "
         "with a dropout rate each, optional augmentation, and the optimizer. The defaults work.")

cfg = st.session_state.config
data = st.session_state.get("data")
classes = data.class_names if data is not None else None

LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
rates = cfg.dropout_rates() if isinstance(cfg.dropout, (list, tuple, int, float)) else [0.2]


def init(key, value):
    if key not in st.session_state:
        st.session_state[key] = value


init("w_pooling", cfg.pooling)
init("w_n_dense", len(cfg.dense))
for i in range(4):
    init(f"w_units_{i}", int(cfg.dense[i]) if i < len(cfg.dense) else 128)
    init(f"w_rate_{i}", float(rates[i]) if i < len(rates) else 0.2)
init("w_augment", cfg.augment == "default")
init("w_optimizer", cfg.optimizer)
init("w_lr", cfg.lr if cfg.lr in LRS else 1e-4)

st.subheader("Head")
h1, h2 = st.columns(2)
pooling = h1.radio("Pooling of the base's feature map", ["gap", "flatten"], key="w_pooling", horizontal=True,
                   format_func={"gap": "Global average (small head)", "flatten": "Flatten (big head)"}.get)
n_dense = int(h2.number_input("Hidden dense layers", min_value=0, max_value=4, step=1, key="w_n_dense"))
dense, dropout = [], []
for i in range(n_dense):
    a, b = st.columns(2)
    dense.append(int(a.number_input(f"Dense layer {i + 1}: units (ReLU)", min_value=1, max_value=8192, step=32,
                                    key=f"w_units_{i}")))
    dropout.append(float(b.number_input(f"Dropout after dense layer {i + 1} (0 ≤ rate < 1)", step=0.05,
                                        format="%.2f", key=f"w_rate_{i}")))
if n_dense == 0:
    dropout.append(float(st.number_input("Dropout before the output (0 ≤ rate < 1)", step=0.05, format="%.2f",
                                         key="w_rate_0")))
out = f"{len(classes)} units, one per class ({', '.join(classes)})" if classes else "one unit per class (choose data first)"
st.markdown(f"**Output layer**: Dense with softmax, {out}. Sized automatically from your data.")

st.subheader("Augmentation")
augment = st.toggle("Augment training images (random flip, rotation, zoom, shift, contrast)", key="w_augment",
                    help="Only training images are changed, freshly each epoch. Turning it on trains the whole "
                         "model on images every epoch instead of on base features computed once (slower).")

st.subheader("Optimizer")
o1, o2 = st.columns(2)
optimizer = o1.selectbox("Optimizer", ["rmsprop", "adam", "sgd"], key="w_optimizer",
                         format_func={"rmsprop": "RMSprop", "adam": "Adam", "sgd": "SGD with momentum"}.get)
lr = o2.select_slider("Learning rate", LRS, key="w_lr", format_func=lambda v: f"{v:g}")

new = replace(cfg, pooling=pooling, dense=dense, dropout=dropout if len(set(dropout)) > 1 else dropout[0],
              augment="default" if augment else "none", optimizer=optimizer, lr=float(lr))
st.session_state.config = new

problems = new.problems()
for p in problems:
    st.error(p)

# Head size on the chosen base, without building the whole model.
def feature_shape(name: str, size: int, alpha: float, cut):
    from core.baseinfo import base_info
    from core.bases import cut_choices

    with st.spinner("Reading the base's layers…"):
        info = base_info(name, size, alpha)
    shapes = {n: shape for n, shape, _ in cut_choices(info, name)}
    last = info.layers[-1].name
    if (cut or last) not in shapes:
        raise ValueError(f"cut: Expected a layer of {info.name} with an image-shaped (H, W, C) output. Received: {cut!r}")
    return shapes[cut or last]


if not any(p.startswith(("base", "alpha", "image_size", "dense", "cut")) for p in problems):
    try:
        shape = feature_shape(new.base, new.resolved_image_size(), float(new.alpha), new.cut)
        n = head_param_estimate(shape, new, len(classes) if classes else 2)
    except Exception as e:
        st.error(str(e))
    else:
        msg = f"Head: {n:,} parameters on a {' × '.join(map(str, shape))} feature map."
        if n > MAX_HEAD_PARAMS:
            st.error(f"{msg} That is more than the {MAX_HEAD_PARAMS:,} allowed: use global average pooling, "
                     "fewer units, or a smaller image size.")
        else:
            st.caption(msg)

if augment and data is not None:
    st.markdown("**Augmented samples** (first column: the original)")

    @st.cache_data(max_entries=8, show_spinner="Augmenting a few training images…")
    def preview(paths: tuple, size: int, seed: int):
        return samples.augmented_samples(list(paths), size, "default", copies=5, seed=seed)

    paths = tuple(samples.preview_paths(data, per_class=1))[:4]
    for row in preview(paths, 128, new.seed):
        st.image(row, width=96)

st.page_link("pages/4_train.py", label="Next: train →", icon=":material/show_chart:")
