import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import DataError, load_arrays, load_dataset, make_sample_dataset
from tests.conftest import write_colour_images


def _junk(folder: Path):
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "desktop.ini").write_text("[.ShellClassInfo]")
    (folder / "._photo.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (folder / ".ipynb_checkpoints").mkdir(exist_ok=True)
    (folder / ".ipynb_checkpoints" / "x.png").write_bytes(b"junk")


def test_class_folders_with_os_junk(colour_dir):
    _junk(colour_dir)
    for c in ("red", "green"):
        _junk(colour_dir / c)
    (colour_dir / "__MACOSX" / "red").mkdir(parents=True)
    (colour_dir / "__MACOSX" / "red" / "._red_00.png").write_bytes(b"\x00\x05\x16\x07")
    d = load_dataset(colour_dir, val_split=0.25, seed=0)
    assert d.class_names == ["blue", "green", "red"]
    assert d.skipped == []
    assert len(d.train) + len(d.validation) == 36
    assert d.validation.counts() == {"blue": 3, "green": 3, "red": 3}  # stratified
    assert d.layout == "classes"


def test_split_is_seeded_and_disjoint(colour_dir):
    a = load_dataset(colour_dir, seed=1)
    b = load_dataset(colour_dir, seed=1)
    c = load_dataset(colour_dir, seed=2)
    assert a.validation.paths == b.validation.paths
    assert a.validation.paths != c.validation.paths
    assert not set(a.train.paths) & set(a.validation.paths)


def test_unusable_files_are_skipped_with_reasons_and_lying_extensions_noted(colour_dir):
    (colour_dir / "red" / "empty.jpg").write_bytes(b"")
    (colour_dir / "red" / "notes.jpg").write_text("shopping list")
    (colour_dir / "red" / "doc.JPG").write_bytes(b"%PDF-1.7 ...")
    good = Image.new("RGB", (40, 40), (220, 40, 40))
    good.save(colour_dir / "red" / "actually_png.jpg", "PNG")
    raw = (colour_dir / "green" / "green_00.png").read_bytes()
    (colour_dir / "green" / "cut.png").write_bytes(raw[: len(raw) // 3])
    d = load_dataset(colour_dir)
    reasons = {Path(s.path).name: s.reason for s in d.skipped}
    assert set(reasons) == {"empty.jpg", "notes.jpg", "doc.JPG", "cut.png"}
    assert "empty" in reasons["empty.jpg"] and "PDF" in reasons["doc.JPG"] and "text" in reasons["notes.jpg"]
    assert any("actually_png.jpg" in n and "PNG" in n for n in d.notes)
    assert any(p.endswith("actually_png.jpg") for p in d.train.paths + d.validation.paths)


def test_train_validation_layout_any_case_with_wrapper_and_nested(tmp_path):
    root = tmp_path / "wrapper" / "My Photos"
    write_colour_images(root / "Train", per_class=6)
    write_colour_images(root / "valid", per_class=2, seed=1)
    write_colour_images(root / "TEST", per_class=2, seed=2, classes=("blue", "red"))
    nested = root / "Train" / "blue" / "holiday 2024"
    nested.mkdir()
    Image.new("RGB", (40, 40), (40, 60, 220)).save(nested / "Ünïcode name 01.PNG")
    d = load_dataset(tmp_path / "wrapper")
    assert d.layout == "splits"
    assert d.train.counts() == {"blue": 7, "green": 6, "red": 6}
    assert len(d.validation) == 6 and d.test is not None and len(d.test) == 4


def test_zip_from_a_mac_with_wrapper_folder(tmp_path):
    src = write_colour_images(tmp_path / "src", per_class=4)
    z = tmp_path / "data set.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*.png")):
            zf.write(p, f"shapes/{p.relative_to(src)}")
            zf.writestr(f"__MACOSX/shapes/{p.parent.name}/._{p.name}", b"\x00\x05\x16\x07")
        zf.writestr("shapes/.DS_Store", b"Bud1")
        zf.writestr("../escape.png", b"nope")
    d = load_dataset(z, val_split=0.25)
    assert d.class_names == ["blue", "green", "red"]
    assert len(d.train) + len(d.validation) == 12 and d.skipped == []
    assert not (tmp_path / "escape.png").exists()


@pytest.mark.parametrize("make,match", [
    (lambda r: (r / "a.png").write_bytes(b"x"), "no class folders"),
    (lambda r: write_colour_images(r, classes=("red",)), "at least 2 class folders"),
])
def test_unusable_layouts_are_refused_clearly(tmp_path, make, match):
    root = tmp_path / "d"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=match):
        load_dataset(root)


def test_a_class_with_no_usable_image_is_named(colour_dir):
    for p in (colour_dir / "green").iterdir():
        p.write_text("not an image")
    with pytest.raises(DataError, match="none in green"):
        load_dataset(colour_dir)


def test_not_a_zip_and_missing_path(tmp_path):
    f = tmp_path / "data.zip"
    f.write_text("hello")
    with pytest.raises(DataError, match="not a zip"):
        load_dataset(f)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_load_arrays_and_sample_dataset(tmp_path):
    root = make_sample_dataset(tmp_path / "sample", per_class=5, size=48)
    d = load_dataset(root, val_split=0.2)
    assert d.class_names == ["circle", "square", "triangle"]
    x = load_arrays(d.train.paths, 32)
    assert x.shape == (len(d.train), 32, 32, 3) and x.dtype == np.uint8
    assert make_sample_dataset(tmp_path / "sample", per_class=5, size=48) == root  # made once


def test_held_out_test_split_is_stratified_and_disjoint(tmp_path):
    root = write_colour_images(tmp_path / "d", per_class=10)
    d = load_dataset(root, val_split=0.2, test_split=0.2, seed=0)
    assert d.test is not None
    assert d.test.counts() == {"blue": 2, "green": 2, "red": 2}
    assert d.validation.counts() == {"blue": 2, "green": 2, "red": 2}
    sets = [set(d.train.paths), set(d.validation.paths), set(d.test.paths)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sum(map(len, sets)) == 30


def test_lopsided_and_tiny_classes_are_warned_with_names_and_numbers(tmp_path):
    root = tmp_path / "d"
    write_colour_images(root, per_class=20, classes=("blue",))
    write_colour_images(root, per_class=1, classes=("red",), seed=1)
    write_colour_images(root, per_class=4, classes=("green",), seed=2)
    d = load_dataset(root, val_split=0.2)
    text = " | ".join(d.warnings)
    assert "no validation images of red (red: 1 train)" in text
    assert "very few training images: green: 3, red: 1" in text
    assert "blue has 16 training images, red has 1 (16:1)" in text
    w = d.class_weights()
    assert w[2] == pytest.approx(20 / (3 * 1)) and w[0] == pytest.approx(20 / (3 * 16))


def test_report_rows_give_sizes_and_formats(tmp_path):
    root = write_colour_images(tmp_path / "d", per_class=3)
    Image.new("RGB", (80, 60)).save(root / "red" / "big.jpg", "JPEG")
    (root / "red" / "bad.png").write_text("x")
    d = load_dataset(root)
    red = next(r for r in d.report_rows() if r["class"] == "red")
    assert red["images"] == 4 and red["skipped"] == 1
    assert red["formats"] == "PNG 3, JPEG 1" and red["median_size"] == "40x40"


def test_progress_is_reported_while_scanning(tmp_path):
    root = write_colour_images(tmp_path / "d", per_class=20)
    seen = []
    load_dataset(root, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (60, 60) and all(t == 60 for _, t in seen)
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, p.relative_to(root).as_posix())
    unpacked, checked = [], []
    load_dataset(z, progress=lambda d, t: checked.append((d, t)), unpack_progress=lambda d, t: unpacked.append((d, t)))
    assert unpacked == [(60, 60)] and checked[-1] == (60, 60)


def test_hostile_zips_nested_archives_and_bombs(tmp_path, monkeypatch):
    import core.data as data_mod

    src = write_colour_images(tmp_path / "src", per_class=3)
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*.png")):
            zf.write(p, str(p.relative_to(src)))
        zf.writestr("red/inner.zip", b"PK\x03\x04")
        zf.writestr("/red/absolute entry.png", (src / "red" / "red_00.png").read_bytes())
        zf.writestr("../../escape.png", (src / "red" / "red_00.png").read_bytes())
        zf.writestr("C:\\Windows\\evil.png", b"x")
    d = load_dataset(z)
    assert any("inner.zip" in n and "nested archive" in n for n in d.notes)
    outside = sorted(n for n in d.notes if "path outside the zip's folder, not unpacked" in n)
    assert [n.split(": path")[0] for n in outside] == ["a.zip:../../escape.png", "a.zip:/red/absolute entry.png",
                                                      "a.zip:C:/Windows/evil.png"]
    assert d.class_names == ["blue", "green", "red"]  # no class "C:", nothing counted twice
    assert d.train.counts()["red"] + d.validation.counts()["red"] == 3
    assert not Path("/red").exists() and not (tmp_path.parent / "escape.png").exists()
    monkeypatch.setattr(data_mod, "MAX_ZIP_BYTES", 1000)
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a/x.png", b"\0" * 100_000)
    with pytest.raises(DataError, match="zip bomb"):
        load_dataset(bomb)


def test_scan_command_prints_classes_and_writes_the_report(tmp_path, capsys):
    from core.cli import main

    root = write_colour_images(tmp_path / "d", per_class=4)
    (root / "red" / "fake.jpg").write_text("not an image")
    report = tmp_path / "report.csv"
    assert main(["scan", str(root), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "red: 4 usable (3 train, 1 validation)" in out
    assert "skipped: " in out and "fake.jpg: not an image: content is text" in out
    lines = report.read_text().splitlines()
    assert lines[0] == "file,reason" and "fake.jpg" in lines[1]
    assert main(["scan", str(tmp_path / "nothing")]) == 1


def test_public_dataset_download_offline_says_so_and_suggests_upload(monkeypatch):
    import keras

    from core.data import download_dataset

    def offline(*a, **k):
        raise Exception("URL fetch failure on https://example.invalid: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(DataError, match=r"could not download horse-or-human .*no internet.*Upload a zip"):
        download_dataset("horse-or-human")


def test_public_dataset_with_two_archives_becomes_train_and_validation(tmp_path, monkeypatch):
    import keras

    from core.data import download_dataset

    def fake_get_file(fname, origin, cache_subdir):
        src = write_colour_images(tmp_path / fname / "wrapper", per_class=3, seed=len(fname))
        z = tmp_path / f"{fname}.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for p in sorted(src.rglob("*.png")):
                zf.write(p, f"wrapper/{p.relative_to(src)}")
        return str(z)

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    d = load_dataset(download_dataset("rock-paper-scissors"))
    assert d.layout == "splits" and d.class_names == ["blue", "green", "red"]
    assert len(d.train) == 9 and len(d.validation) == 9


def _zip_of(src: Path, z: Path, prefix: str = "", backslash_dirs: bool = False) -> Path:
    with zipfile.ZipFile(z, "w") as zf:
        if backslash_dirs:
            zf.writestr(zipfile.ZipInfo("photos\\"), b"")
            for d in sorted(p for p in src.iterdir() if p.is_dir()):
                zf.writestr(zipfile.ZipInfo(f"photos\\{d.name}\\"), b"")
        for p in sorted(src.rglob("*.png")):
            rel = str(p.relative_to(src))
            zf.write(p, f"photos\\{rel.replace('/', chr(92))}" if backslash_dirs else f"{prefix}{rel}")
    return z


def test_windows_zip_with_backslash_folder_entries(tmp_path):
    src = write_colour_images(tmp_path / "src", per_class=3)
    d = load_dataset(_zip_of(src, tmp_path / "win.zip", backslash_dirs=True))
    assert d.class_names == ["blue", "green", "red"] and d.skipped == []


def test_damaged_and_odd_zip_members_are_skipped_by_name_not_crashes(tmp_path):
    src = write_colour_images(tmp_path / "src", per_class=3)
    z = _zip_of(src, tmp_path / "odd.zip")
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("red/" + "x" * 300 + ".png", b"whatever")  # too long a name for the disk
        zf.writestr("green", b"a file named like a class folder")
    d = load_dataset(z)
    reasons = {d.display(s.path): s.reason for s in d.skipped}
    assert any(k.startswith("odd.zip:red/xxx") and "too long" in v for k, v in reasons.items())
    assert len(d.train) + len(d.validation) == 9
    assert not list((Path(d.root).parent).glob("tmp*"))  # nothing half-extracted left behind


def test_a_class_called_train_is_a_class_and_class_case_matches_across_splits(tmp_path):
    root = write_colour_images(tmp_path / "vehicles", per_class=3, classes=("blue", "green"))
    write_colour_images(tmp_path / "tmp_train", per_class=3, classes=("red",))
    (tmp_path / "tmp_train" / "red").rename(root / "train")
    d = load_dataset(root)
    assert d.class_names == ["blue", "green", "train"] and d.layout == "classes"
    split = tmp_path / "split"
    write_colour_images(split / "train", per_class=4, classes=("red", "blue"))
    write_colour_images(split / "validation", per_class=2, classes=("Red", "BLUE"), seed=1)
    d = load_dataset(split)
    assert d.validation.counts() == {"blue": 2, "red": 2}


def test_two_validation_folders_are_refused_and_a_readme_beside_a_wrapper_is_fine(tmp_path):
    root = tmp_path / "d"
    write_colour_images(root / "train", per_class=3, classes=("red", "blue"))
    write_colour_images(root / "val", per_class=2, classes=("red", "blue"))
    write_colour_images(root / "validation", per_class=1, classes=("red", "blue"))
    with pytest.raises(DataError, match="Expected one validation folder. Received: val/, validation/"):
        load_dataset(root)
    wrapped = tmp_path / "w"
    write_colour_images(wrapped / "photos", per_class=3)
    (wrapped / "README.txt").write_text("my photos")
    assert load_dataset(wrapped).class_names == ["blue", "green", "red"]


def test_errors_about_a_zip_name_the_zip_not_the_cache(tmp_path):
    z = tmp_path / "holiday.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("a.png", b"x")
    with pytest.raises(DataError, match="in holiday.zip") as e:
        load_dataset(z)
    assert "transfer_lab" not in str(e.value) and "zips" not in str(e.value)


# -- more sources: zips unpacked in a chosen folder, several zips, classes uploaded one by one --------

def _png_bytes(colour=(200, 0, 0), size=(24, 24), fmt="PNG") -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def test_a_zip_is_unpacked_where_asked_and_named_as_the_person_knows_it(tmp_path):
    src = write_colour_images(tmp_path / "src", per_class=3)
    (src / "red" / "notes.jpg").write_text("not an image")
    z = tmp_path / "upload.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, f"photos/{p.relative_to(src)}")
    mine = tmp_path / "workspace" / "unpacked"
    d = load_dataset(z, unpack_dir=mine)
    assert all(p.startswith(str(mine)) for p in d.train.paths + d.validation.paths)
    assert [d.display(s.path) for s in d.skipped] == ["upload.zip:photos/red/notes.jpg"]
    assert d.skipped[0].label == "red"
    assert d.skipped_csv().splitlines() == ["file,reason", "upload.zip:photos/red/notes.jpg,not an image: content is text"]


def test_skipped_csv_is_what_the_scan_command_writes(tmp_path):
    from core.cli import main

    root = write_colour_images(tmp_path / "d", per_class=3)
    (root / "green" / "empty, really.png").write_bytes(b"")
    report = tmp_path / "r.csv"
    assert main(["scan", str(root), "--report", str(report)]) == 0
    d = load_dataset(root)
    assert report.read_bytes().decode() == d.skipped_csv()
    assert d.report_rows()[1]["skipped"] == 1 and d.skipped[0].label == "green"


def _zip_dir(src: Path, z: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(src).as_posix())
    return z


def test_several_zips_merge_into_one_dataset(tmp_path):
    from core.data import merge_zips

    a = _zip_dir(write_colour_images(tmp_path / "a", per_class=3, classes=("red", "blue")), tmp_path / "a.zip", "wrap/")
    b = _zip_dir(write_colour_images(tmp_path / "b", per_class=2, classes=("Red", "green"), seed=1), tmp_path / "b.zip")
    with zipfile.ZipFile(b, "a") as zf:
        zf.writestr("green/bad.png", b"oops")
        zf.writestr("green/inner.zip", b"PK\x03\x04")
    merged = merge_zips([a, b], tmp_path / "merged", tmp_path / "unpacked", names=["a.zip", "b.zip"])
    d = load_dataset(merged, val_split=0.25)
    assert d.class_names == ["blue", "green", "red"]
    assert {k: d.train.counts()[k] + d.validation.counts()[k] for k in d.class_names} == {"blue": 3, "green": 2, "red": 5}
    assert [(d.display(s.path), s.label) for s in d.skipped] == [("b.zip:green/bad.png", "green")]
    assert any("b.zip:green/inner.zip" in n and "nested archive" in n for n in d.notes)
    assert merge_zips([a, b], tmp_path / "merged", tmp_path / "unpacked", names=["a.zip", "b.zip"]) == merged


def test_zips_of_loose_images_become_classes_named_after_the_zips(tmp_path):
    from core.data import merge_zips

    zs = []
    for name, colour in (("cats", (200, 0, 0)), ("dogs", (0, 0, 200))):
        z = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for i in range(3):
                zf.writestr(f"IMG_{i:04d}.JPG", _png_bytes(colour, fmt="JPEG"))
        zs.append(z)
    d = load_dataset(merge_zips(zs, tmp_path / "m", tmp_path / "u"))
    assert d.class_names == ["cats", "dogs"] and len(d.train) + len(d.validation) == 6


def test_zips_whose_layouts_clash_are_refused_with_each_layout_named(tmp_path):
    from core.data import merge_zips

    split = tmp_path / "split"
    write_colour_images(split / "train", per_class=2, classes=("red", "blue"))
    write_colour_images(split / "validation", per_class=1, classes=("red", "blue"))
    a = _zip_dir(split, tmp_path / "split.zip")
    b = _zip_dir(write_colour_images(tmp_path / "c", per_class=2), tmp_path / "classes.zip")
    with pytest.raises(DataError, match=r"same layout.*split.zip: train/ \+ validation/ folders; classes.zip: class folders"):
        merge_zips([a, b], tmp_path / "m", tmp_path / "u")
    with pytest.raises(DataError, match="at least 2 zips"):
        merge_zips([a], tmp_path / "m", tmp_path / "u")


def test_two_split_zips_merge_split_by_split(tmp_path):
    from core.data import merge_zips

    zs = []
    for i, cls in enumerate((("red", "blue"), ("red", "green"))):
        root = tmp_path / f"s{i}"
        write_colour_images(root / "Train", per_class=3, classes=cls, seed=i)
        write_colour_images(root / "val", per_class=1, classes=cls, seed=i + 5)
        zs.append(_zip_dir(root, tmp_path / f"s{i}.zip"))
    d = load_dataset(merge_zips(zs, tmp_path / "m", tmp_path / "u"))
    assert d.layout == "splits" and d.train.counts() == {"blue": 3, "green": 3, "red": 6}
    assert d.validation.counts() == {"blue": 1, "green": 1, "red": 2}


def test_classes_uploaded_one_by_one_build_a_dataset(tmp_path):
    from core.data import add_class_images, class_folder_counts, remove_class

    root = tmp_path / "classes"
    kept, bad = add_class_images(root, "  Grüne Äpfel ", [("IMG 1.jpg", _png_bytes((0, 200, 0), fmt="JPEG")),
                                                       ("IMG 1.jpg", _png_bytes((0, 190, 0), fmt="JPEG")),
                                                       ("notes.jpg", b"shopping list")])
    assert kept == 2 and [(s.path, s.label) for s in bad] == [("notes.jpg", "Grüne Äpfel")]
    assert "text" in bad[0].reason
    add_class_images(root, "grüne äpfel", [("IMG 1.jpg", _png_bytes((0, 200, 0), fmt="JPEG"))])  # same file again
    add_class_images(root, "red/../x", [(f"../r{i}.png", _png_bytes()) for i in range(3)])
    assert class_folder_counts(root) == {"Grüne Äpfel": 2, "red .. x": 3}
    d = load_dataset(root)
    assert d.class_names == ["Grüne Äpfel", "red .. x"]
    remove_class(root, "red .. x")
    assert class_folder_counts(root) == {"Grüne Äpfel": 2}


@pytest.mark.parametrize("name", ["", "   ", "..", "train", "__MACOSX", "Thumbs.db", "x" * 200])
def test_unusable_class_names_are_refused(tmp_path, name):
    from core.data import add_class_images

    with pytest.raises(DataError, match="class name: Expected"):
        add_class_images(tmp_path, name, [("a.png", _png_bytes())])


def test_folders_on_the_server_can_be_limited_or_turned_off(tmp_path, monkeypatch):
    from core.data import FOLDERS_ENV, check_server_folder

    root = write_colour_images(tmp_path / "photos", per_class=2)
    monkeypatch.delenv(FOLDERS_ENV, raising=False)
    assert check_server_folder(f" {root} ") == root
    with pytest.raises(DataError, match="does not exist"):
        check_server_folder(str(tmp_path / "nope"))
    monkeypatch.setenv(FOLDERS_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="Expected a folder under"):
        check_server_folder(str(root))
    monkeypatch.setenv(FOLDERS_ENV, "0")
    with pytest.raises(DataError, match="turned off"):
        check_server_folder(str(root))


# -- names and archives people really make ----------------------------------------------------------

def test_duplicate_names_in_subfolders_unicode_spaces_and_upper_case_extensions(tmp_path):
    root = tmp_path / "d"
    for cls, colour in (("Café au lait ☕", (150, 100, 60)), ("naïve blue", (0, 0, 200))):
        for sub in ("2023 trip", "2024 trip"):
            (root / cls / sub).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (30, 20), colour).save(root / cls / sub / f"IMG_000{i}.JPEG", "JPEG")
    d = load_dataset(root)
    assert d.class_names == ["Café au lait ☕", "naïve blue"]
    assert {k: d.train.counts()[k] + d.validation.counts()[k] for k in d.class_names} == {
        "Café au lait ☕": 4, "naïve blue": 4}
    assert d.report_rows()[0]["formats"] == "JPEG 4" and d.notes == []


def _clear_utf8_flag(z: Path) -> None:
    """Make a zip as old Windows/macOS tools do: UTF-8 names without the UTF-8 flag."""
    raw = bytearray(z.read_bytes())
    for sig, off in ((b"PK\x03\x04", 7), (b"PK\x01\x02", 9)):
        i = raw.find(sig)
        while i >= 0:
            raw[i + off] &= ~0x08 & 0xFF  # bit 11 of the flags is bit 3 of their second byte
            i = raw.find(sig, i + 4)
    z.write_bytes(bytes(raw))


def test_unicode_names_in_a_zip_without_the_utf8_flag(tmp_path):
    z = tmp_path / "fotos.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for cls in ("Ärger", "çà"):
            for i in range(3):
                zf.writestr(f"{cls}/bild {i} ü.png", _png_bytes((i * 60, 0, 0)))
    _clear_utf8_flag(z)
    with zipfile.ZipFile(z) as zf:
        assert all(i.flag_bits & 0x800 == 0 for i in zf.infolist())
    assert load_dataset(z).class_names == ["Ärger", "çà"]


def test_appledouble_and_junk_only_in_a_class_never_count(tmp_path):
    z = tmp_path / "mac.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for cls in ("a", "b"):
            for i in range(3):
                zf.writestr(f"{cls}/{i}.png", _png_bytes((i * 60, 90, 0)))
                zf.writestr(f"{cls}/._{i}.png", b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
        zf.writestr("__MACOSX/._a", b"\x00\x05\x16\x07")
        zf.writestr(".ipynb_checkpoints/x-checkpoint.png", _png_bytes())
        zf.writestr("Thumbs.db", b"\xd0\xcf")
    d = load_dataset(z)
    assert d.class_names == ["a", "b"] and d.skipped == [] and len(d.train) + len(d.validation) == 6


# -- property: no archive member name writes outside the unpack folder or crashes -----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PART = st.one_of(
    st.sampled_from(["..", ".", "", "...", "a", "b c", "ü", "\\", "..\\..", "C:", "~", "$HOME", "__MACOSX",
                     "._x.png", ".DS_Store", "x.zip", "con", "a" * 256]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12),
)
_NAME = st.builds(lambda lead, parts, ext: lead + "/".join(parts) + ext,
                  st.sampled_from(["", "/", "//", "./", "../", "\\"]), st.lists(_PART, min_size=1, max_size=5),
                  st.sampled_from(["", ".png", ".JPG", "/"]))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(_NAME, min_size=1, max_size=6, unique=True))
def test_any_member_names_stay_inside_the_unpack_folder(names):
    import tempfile

    from core.data import extract_zip

    png = _png_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        z = tmp / "in.zip"
        with zipfile.ZipFile(z, "w") as zf:
            for i, name in enumerate(names):
                zf.writestr(zipfile.ZipInfo(name), png if i % 2 else b"data")
        out = tmp / "box" / "unpacked"
        try:
            dest = extract_zip(z, out)
        except DataError:
            return
        assert sorted(p.name for p in tmp.iterdir()) == ["box", "in.zip"]
        assert [p.name for p in (tmp / "box").iterdir()] == ["unpacked"]
        assert [p.name for p in out.iterdir()] == [dest.name]
        for p in dest.rglob("*"):
            assert not p.is_symlink() and dest.resolve() in p.resolve().parents
        try:  # and the dataset either loads or says why
            load_dataset(z, unpack_dir=out)
        except DataError:
            pass


def test_thumbnails_spread_over_a_class_and_skip_files_gone_since(tmp_path):
    from core import samples

    root = write_colour_images(tmp_path / "d", per_class=20, classes=("red", "blue"))
    d = load_dataset(root, val_split=0.2)
    picked = samples.thumbnail_paths(d, per_class=4)
    reds = [p for p, y in zip(d.train.paths, d.train.labels) if d.class_names[y] == "red"]
    assert picked["red"] == [reds[0], reds[5], reds[10], reds[15]]
    Path(picked["red"][1]).unlink()
    items = samples.thumbnail_items(d, per_class=4, size=16)
    assert [p for p, _ in items["red"]] == [reds[0], reds[10], reds[15]]
    assert items["blue"][0][1].shape == (16, 16, 3)
    big = samples.preview_image(picked["red"][0], max_side=20)
    assert big.shape == (20, 20, 3)


def test_a_test_fraction_comes_out_of_train_when_the_splits_have_no_test_folder(tmp_path):
    root = tmp_path / "d"
    write_colour_images(root / "train", per_class=10, classes=("red", "blue"))
    write_colour_images(root / "validation", per_class=2, classes=("red", "blue"), seed=1)
    d = load_dataset(root, test_split=0.2, seed=3)
    assert d.layout == "splits" and d.test_from == "fraction"
    assert d.test.counts() == {"blue": 2, "red": 2} and d.train.counts() == {"blue": 8, "red": 8}
    assert not set(d.test.paths) & set(d.train.paths) and d.validation.counts() == {"blue": 2, "red": 2}
    assert load_dataset(root, test_split=0.2, seed=3).test.paths == d.test.paths
    write_colour_images(root / "test", per_class=1, classes=("red", "blue"), seed=2)
    d = load_dataset(root, test_split=0.2)
    assert d.test_from == "folder" and len(d.test) == 2 and len(d.train) == 20


@settings(max_examples=50, deadline=None)
@given(name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40))
def test_any_typed_class_name_is_one_safe_folder_or_refused(name):
    from core.data import clean_class_name, is_junk

    try:
        cleaned = clean_class_name(name)
    except DataError as e:
        assert "class name: Expected" in str(e)
        return
    assert cleaned and "/" not in cleaned and "\\" not in cleaned and cleaned not in (".", "..")
    assert not is_junk(cleaned) and cleaned == cleaned.strip()
    assert len(Path(cleaned).parts) == 1
