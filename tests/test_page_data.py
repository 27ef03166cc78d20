"""The Data page's sources and report through AppTest: classes uploaded one by one, several zips,
the skipped-files CSV, the split and class-weight controls, server folders, deleting one's data."""
import io
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "streamlit_app.py")


def app(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    for k, v in state.items():
        at.session_state[k] = v
    at.run()
    return at


def texts(elements) -> str:
    """Element texts as shown (the page escapes Markdown in file and class names)."""
    return re.sub(r"\\(.)", r"\1", "\n".join(str(e.value) for e in elements))


def _img(colour, fmt="PNG", size=(24, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def _zip(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _classes_zip(classes=("red", "blue"), n=4, extra=None) -> bytes:
    colours = {"red": (220, 0, 0), "blue": (0, 0, 220), "green": (0, 200, 0)}
    files = {f"{c}/{i}.png": _img(colours[c]) for c in classes for i in range(n)}
    files.update(extra or {})
    return _zip(files)


def test_classes_uploaded_one_by_one_build_a_dataset():
    at = app()
    for round_, (name, colour) in enumerate((("Äpfel", (0, 200, 0)), ("pears", (200, 200, 0)))):
        at.text_input(key="cls_name").set_value(name)
        files = [(f"IMG_{i}.JPG", _img(colour, "JPEG"), "image/jpeg") for i in range(4)]
        if round_ == 1:
            files.append(("notes.jpg", b"shopping list", "image/jpeg"))
        at.file_uploader(key=f"cls_files_{round_}").set_value(files).run()
        at.button(key="cls_add").click().run()
        assert not at.exception
    assert "Added 4 image(s) to pears" in texts(at.warning)
    assert "notes.jpg (not an image: content is text)" in texts(at.warning)
    assert "**Äpfel**: 4 image(s)" in texts(at.markdown)
    at.button(key="cls_use").click().run()
    assert not at.exception
    data = at.session_state.data
    assert data.class_names == ["pears", "Äpfel"] and len(data.train) + len(data.validation) == 8
    ws = at.session_state.workspace
    assert Path(data.root) == ws.folder("classes")


def test_several_zips_are_merged_and_clashing_layouts_refused():
    at = app()
    a = ("a.zip", _classes_zip(("red", "blue")), "application/zip")
    b = ("b.zip", _classes_zip(("green",), n=3), "application/zip")
    at.file_uploader(key="data_zip").set_value([a, b]).run()
    assert not at.exception
    assert at.session_state.data.class_names == ["blue", "green", "red"]
    assert at.session_state.data_source == "a.zip + b.zip"
    split = _zip({f"{s}/{c}/{i}.png": _img((200, 0, 0) if c == "red" else (0, 0, 200))
                  for s in ("train", "validation") for c in ("red", "blue") for i in range(2)})
    at.file_uploader(key="data_zip").set_value([a, ("split.zip", split, "application/zip")]).run()
    assert not at.exception
    assert "Expected the same layout in every zip" in texts(at.error)
    assert "split.zip: train/ + validation/ folders" in texts(at.error)
    assert "data" not in at.session_state


def test_uploaded_zips_are_unpacked_in_the_workspace_and_delete_my_data_empties_it(monkeypatch):
    at = app()
    at.file_uploader(key="data_zip").set_value(("mine.zip", _classes_zip(), "application/zip")).run()
    ws = at.session_state.workspace
    data = at.session_state.data
    assert all(p.startswith(str(ws.root)) for p in data.train.paths)  # never a shared cache folder
    assert ws.size_bytes() > 0
    at.button(key="delete_data").click().run()
    assert not at.exception
    assert not ws.exists()
    assert not [k for k in ("data", "run", "data_thumbs") if k in at.session_state]
    assert at.session_state.workspace.id != ws.id
    assert at.query_params["ws"] == at.session_state.workspace.id
    assert "Deleted: your uploads" in texts(at.success)
    assert at.file_uploader[0].value == []  # a fresh uploader: the zip is not loaded again
    at.run()
    assert "data" not in at.session_state and not ws.exists()


def test_skipped_files_csv_is_offered_for_download(monkeypatch):
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    saved = []
    original = MemoryMediaFileStorage.load_and_get_id

    def spy(self, path_or_data, mimetype, kind, filename=None):
        saved.append((filename, path_or_data))
        return original(self, path_or_data, mimetype, kind, filename)

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", spy)
    at = app()
    zipped = _classes_zip(extra={"red/notes.jpg": b"not a picture", "blue/empty.png": b""})
    at.file_uploader(key="data_zip").set_value(("shapes.zip", zipped, "application/zip")).run()
    assert not at.exception
    assert at.download_button(key="skipped_csv").label == "Download the skipped files as CSV"
    csv_text = dict(saved)["skipped.csv"]
    csv_text = csv_text.decode() if isinstance(csv_text, bytes) else csv_text
    assert csv_text == at.session_state.data.skipped_csv()
    assert csv_text.splitlines() == ["file,reason", "shapes.zip:blue/empty.png,empty file (0 bytes)",
                                     "shapes.zip:red/notes.jpg,not an image: content is text"]
    report = at.dataframe[0].value
    assert report.set_index("class")["skipped"].to_dict() == {"blue": 1, "red": 1}
    assert report.set_index("class")["formats"].to_dict() == {"blue": "PNG 4", "red": "PNG 4"}


def test_test_share_class_weights_and_lopsided_warning():
    at = app()
    files = {f"big/{i}.png": _img((200, 0, 0)) for i in range(30)}
    files.update({f"small/{i}.png": _img((0, 0, 200)) for i in range(3)})
    at.file_uploader(key="data_zip").set_value(("lopsided.zip", _zip(files), "application/zip")).run()
    assert "big has 24 training images, small has 2 (12:1)" in texts(at.warning)
    at.select_slider(key="w_test_split").set_value(20).run()
    assert not at.exception
    data = at.session_state.data
    assert at.session_state.config.test_split == 0.2
    assert data.test is not None and data.test.counts() == {"big": 6, "small": 1}
    at.toggle(key="w_class_weights").set_value(True).run()
    assert at.session_state.config.class_weights is True
    assert data.train.counts() == {"big": 18, "small": 1}
    assert "Weights used in training: big 0.53, small 9.50" in texts(at.caption)


def test_server_folder_is_read_or_turned_off(tmp_path, monkeypatch):
    from core.data import FOLDERS_ENV

    root = tmp_path / "photos"
    for c, colour in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200))):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"{i}.png").write_bytes(_img(colour))
    monkeypatch.delenv(FOLDERS_ENV, raising=False)
    at = app()
    at.text_input(key="server_folder").set_value(str(root)).run()
    at.button(key="use_folder").click().run()
    assert at.session_state.data.class_names == ["cats", "dogs"]
    monkeypatch.setenv(FOLDERS_ENV, "0")
    at = app()
    assert "turned off here (TRANSFER_LAB_FOLDERS=0)" in texts(at.info)
    assert not [w for w in at.text_input if w.key == "server_folder"]


def test_course_dataset_offline_says_so(monkeypatch):
    import core.data
    from core.data import DataError

    def offline(name):
        raise DataError(f"could not download {name} (no internet connection?). Upload a zip of class folders instead")

    monkeypatch.setattr(core.data, "download_dataset", offline)
    at = app()
    at.selectbox(key="public_name").set_value("horse-or-human").run()
    at.button(key="use_public").click().run()
    assert not at.exception
    assert "could not download horse-or-human" in texts(at.error) and "Upload a zip" in texts(at.error)


def test_upload_limit_is_shown_and_an_oversize_zip_is_a_readable_message(monkeypatch):
    import streamlit

    at = app()
    assert "Up to 500 MB per file" in texts(at.caption)
    real = streamlit.get_option
    monkeypatch.setattr(streamlit, "get_option", lambda key: 1 if key == "server.maxUploadSize" else real(key))
    at = app()
    big = _classes_zip(extra={"red/noise.bin": bytes(1_600_000)})
    at.file_uploader(key="data_zip").set_value(("big.zip", big, "application/zip")).run()
    assert not at.exception
    assert "big.zip: Expected at most 1 MB. Received: 1.5 MB" in texts(at.error)


def test_thumbnails_enlarge_on_click():
    from core.data import load_dataset, make_sample_dataset

    at = app(data=load_dataset(make_sample_dataset(per_class=6, size=32)), data_source="sample")
    assert len([b for b in at.button if b.key and b.key.startswith("thumb_")]) == 3 * 5  # 5 train images a class
    at.button(key="thumb_0_0").click().run()
    assert not at.exception
    assert re.search(r"circle\\?_000\.png · PNG · 32×32 px", texts(at.caption))


def test_split_zip_without_a_test_folder_gets_a_test_share_from_train():
    at = app()
    split = _zip({f"{s}/{c}/{i}.png": _img((200, 0, 0) if c == "red" else (0, 0, 200))
                  for s, n in (("train", 10), ("val", 2)) for c in ("red", "blue") for i in range(n)})
    at.file_uploader(key="data_zip").set_value(("split.zip", split, "application/zip")).run()
    assert at.select_slider(key="w_val_split").disabled and not at.select_slider(key="w_test_split").disabled
    at.select_slider(key="w_test_split").set_value(20).run()
    data = at.session_state.data
    assert data.test.counts() == {"blue": 2, "red": 2} and data.train.counts() == {"blue": 8, "red": 8}
    assert "20% of each class in train/ is kept aside as a test split" in texts(at.info)
