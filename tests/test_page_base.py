"""The Base & layers page: per-layer locking in an editable table, filters, any cut, head cost, BatchNorm.

Through streamlit.testing's AppTest from streamlit_app.py; MobileNet alpha 0.25 at 32 px, weights none
or a weights file the tests save (tests/conftest.py)."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import ExperimentConfig

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")
TINY = dict(base="mobilenet", alpha=0.25, image_size=32, weights="none", freeze="all", dense=[16])
HEAD = 256 * 16 + 16 + 16 * 3 + 3  # GAP of 256 channels -> 16 -> 3 classes


@pytest.fixture(scope="module")
def sample():
    from core.data import load_dataset, make_sample_dataset

    return load_dataset(make_sample_dataset(per_class=12, size=32))


def base_page(sample, **config) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["data"] = sample
    at.session_state["config"] = ExperimentConfig(**{**TINY, **config})
    for k, v in config.pop("_state", {}).items() if "_state" in config else ():
        at.session_state[k] = v
    at.run()
    at.switch_page("pages/2_base.py").run()
    assert not at.exception
    return at


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def trainable(at) -> int:
    return int(metrics(at)["Trainable parameters"].replace(",", ""))


def tick(at, changes: dict) -> None:
    """Edit the per-layer table as a person would: {layer name: trainable}."""
    editor = at.data_editor[0]
    names = list(editor.value["name"])
    at.session_state[editor.key] = {"edited_rows": {names.index(n): {"trainable": v} for n, v in changes.items()},
                                    "added_rows": [], "deleted_rows": []}
    at.run()
    assert not at.exception


def test_per_layer_ticks_become_the_lock_spec_and_live_counts(sample):
    at = base_page(sample)
    assert trainable(at) == HEAD and not at.data_editor  # read-only table until per-layer is chosen
    at.radio(key="w_lock").set_value("unlock").run()
    assert at.data_editor and at.session_state.config.freeze == "all"
    assert list(at.data_editor[0].value.columns)[:6] == ["index", "name", "type", "output_shape", "params", "trainable"]
    tick(at, {"conv_pw_13": True, "conv1": True})
    assert at.session_state.config.freeze == "unlock:conv1,conv_pw_13"
    assert trainable(at) == HEAD + 256 * 256 + 3 * 3 * 3 * 8
    table = at.data_editor[0].value.set_index("name")
    assert table.loc["conv_pw_13", "trainable"] and table.loc["conv1", "trainable"]
    assert not table.loc["conv_pw_12", "trainable"]
    tick(at, {"conv1": False})
    assert at.session_state.config.freeze == "unlock:conv_pw_13"
    tick(at, {"conv_pw_13": False})
    assert at.session_state.config.freeze == "all" and trainable(at) == HEAD


def test_per_layer_starts_from_the_lock_shown_and_top_layers_make_an_up_to_spec(sample):
    at = base_page(sample)
    at.radio(key="w_lock").set_value("top").run()
    at.number_input(key="w_lock_top").set_value(6).run()
    before = trainable(at)
    assert at.session_state.config.freeze == "top:6" and before > HEAD
    at.radio(key="w_lock").set_value("unlock").run()
    assert at.session_state.config.freeze == "top:6" and trainable(at) == before
    tick(at, {"conv_pw_12_bn": True})  # weights none: BatchNorm trains, so the unlocked ones are the top ones
    assert at.session_state.config.freeze == "up-to:conv_pw_12"
    assert trainable(at) == before + 2 * 256  # conv_pw_12_bn: scale and offset of 256 channels


def test_batchnorm_stays_locked_on_a_pretrained_base_and_is_warned_when_let_train(sample, tiny_weights):
    w = str(tiny_weights["legacy"])
    at = base_page(sample, weights=w, freeze="unlock:conv_pw_13")
    at.session_state["w_weights"] = "file"
    at.session_state["weights_file"] = w
    at.run()
    assert not at.exception and at.session_state.config.weights == w
    assert at.radio(key="w_lock").value == "unlock"
    tick(at, {"conv_pw_13_bn": True})
    assert at.session_state.config.freeze == "unlock:conv_pw_13"
    assert "conv_pw_13_bn** cannot be unlocked: BatchNorm stays locked" in "\n".join(str(i.value) for i in at.info)
    at.checkbox(key="w_train_bn").check().run()
    assert not at.warning  # the spec leaves conv_pw_13_bn locked
    tick(at, {"conv_pw_13_bn": True})
    assert at.session_state.config.freeze == "up-to:conv_dw_13_bn"
    assert "1 unlocked BatchNorm layer will train** (conv_pw_13_bn)" in "\n".join(str(w.value) for w in at.warning)


def test_filter_by_name_and_type(sample):
    at = base_page(sample)
    at.text_input(key="w_filter").input("pw_13").run()
    assert list(at.dataframe[0].value["name"]) == ["conv_pw_13", "conv_pw_13_bn", "conv_pw_13_relu"]
    at.text_input(key="w_filter").input("").run()
    at.multiselect(key="w_types").select("DepthwiseConv2D").run()
    names = list(at.dataframe[0].value["name"])
    assert names == [f"conv_dw_{i}" for i in range(1, 14)]
    assert "13 of 86 layers shown." in [c.value for c in at.caption]


def test_head_attaches_at_any_layer_suggested_ones_first(sample):
    at = base_page(sample)
    options = at.selectbox(key="w_cut").options
    assert options[1].startswith("★ conv_pw_1_relu → 16 × 16 × 16")
    assert "conv_dw_5_bn → 4 × 4 × 64" in options  # not a suggested cut, offered too
    assert len(options) == 85  # the last layer first, then every other layer but the input
    at.selectbox(key="w_cut").set_value("conv_dw_5_bn").run()
    assert not at.exception and at.session_state.config.cut == "conv_dw_5_bn"
    assert metrics(at)["Base output (H, W, C)"] == "4 × 4 × 64"
    assert int(metrics(at)["Head parameters"].replace(",", "")) == 64 * 16 + 16 + 16 * 3 + 3
    state = at.dataframe[0].value.set_index("name")["state"]
    assert state["conv_dw_5_bn"] == "locked" and state["conv_dw_5_relu"] == "cut off"
    assert list(state).count("cut off") == 86 - 1 - list(state.index).index("conv_dw_5_bn")


def test_a_flatten_head_past_the_cap_is_refused_with_its_memory(sample):
    at = base_page(sample, base="mobilenet_v2", alpha=1.0, image_size=224, pooling="flatten", dense=[1024],
                   optimizer="adam")
    err = "\n".join(str(e.value) for e in at.error)
    assert "This head is too big to train" in err and "64,229,379 weights" in err
    assert "245 MiB as float32, 735 MiB while training with adam" in err and "global average pooling" in err


@pytest.mark.slow
def test_the_course_head_on_inception_mixed7_passes_with_its_cost_shown(sample):
    at = base_page(sample, base="inception_v3", alpha=1.0, image_size=150, cut="mixed7", pooling="flatten",
                   dense=[1024])
    assert at.selectbox(key="w_cut").value == "mixed7"
    assert metrics(at)["Base output (H, W, C)"] == "7 × 7 × 768"
    assert not any("too big" in str(e.value) for e in at.error)
    assert "38,539,267 weights, 147 MiB as float32, 294 MiB while training with rmsprop" in \
        "\n".join(str(w.value) for w in at.warning)
