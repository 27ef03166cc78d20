import io

import numpy as np
import pytest
from PIL import Image

from core.images import ImageDecodeError, decode_image


def _save(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_png_round_trips_exactly():
    arr = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = decode_image(_save(Image.fromarray(arr), "PNG"))
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_size_centre_crops_to_a_square():
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 20:60] = 255  # the centre square is white, the sides black
    out = decode_image(_save(Image.fromarray(arr), "PNG"), size=16)
    assert out.shape == (16, 16, 3)
    assert out.min() > 200


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("P", "GIF"), ("CMYK", "JPEG"), ("1", "BMP"),
                                      ("RGB", "WEBP"), ("RGB", "TIFF"), ("LA", "PNG")])
def test_any_mode_becomes_8bit_rgb(mode, fmt):
    img = Image.new("RGB", (12, 10), (200, 100, 50)).convert(mode)
    out = decode_image(_save(img, fmt))
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8


def test_transparency_is_shown_over_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0, 255))
    out = decode_image(_save(img, "PNG"))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_16bit_grayscale_is_scaled_not_clipped():
    img = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert img.mode.startswith("I;16")
    out = decode_image(_save(img, "PNG"))
    assert out.min() == 255
    half = decode_image(_save(Image.fromarray(np.full((4, 4), 32896, np.uint16)), "PNG"))
    assert int(half[0, 0, 0]) == 128


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(_save(img, "JPEG", exif=exif))
    assert out.shape == (40, 20, 3)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"%PDF-1.4 not really", "PDF"),
    (b"hello, I am text pretending to be a photo\n", "text"),
])
def test_non_images_are_refused_with_a_reason(tmp_path, content, reason):
    p = tmp_path / "photo.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(p)
    assert reason in e.value.reason


def test_truncated_jpeg_fails_up_front(tmp_path):
    data = _save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(p, size=32)


def test_palette_with_transparency_is_shown_over_white():
    img = Image.new("P", (4, 4), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((0, 0), 1)
    out = decode_image(_save(img, "PNG", transparency=0))  # palette entry 0 (red) is see-through
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[3, 3]) == (255, 255, 255)


def test_cmyk_jpeg_keeps_its_colours():
    img = Image.new("RGB", (16, 16), (220, 30, 30)).convert("CMYK")
    out = decode_image(_save(img, "JPEG", quality=95))
    r, g, b = (int(v) for v in out[8, 8])
    assert r > 180 and g < 80 and b < 80


@pytest.mark.parametrize("arr,first,last", [
    (np.full((4, 4), 65535, np.uint16), 255, 255),  # 16-bit grayscale TIFF (scanners, microscopes)
    (np.arange(16, dtype=np.int32).reshape(4, 4) * 100, 0, 255),  # 32-bit integers: stretched to their range
    (np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), 0, 255),  # floating point 0..1: black..white
])
def test_high_bit_depth_tiffs_become_8bit_rgb(arr, first, last):
    out = decode_image(_save(Image.fromarray(arr), "TIFF"))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    assert (int(out[0, 0, 0]), int(out[-1, -1, 0])) == (first, last)


def test_pixel_bombs_are_refused_before_decoding(monkeypatch):
    import core.images as images

    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    png = _save(Image.new("RGB", (40, 30)), "PNG")  # 1,200 pixels: over this test's cap
    with pytest.raises(ImageDecodeError, match=r"too large \(40x30 pixels"):
        decode_image(png)
    assert decode_image(_save(Image.new("RGB", (30, 30)), "PNG")).shape == (30, 30, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_a_lying_extension_decodes_by_content(tmp_path, fmt):
    p = tmp_path / "photo.jpg" if fmt != "JPEG" else tmp_path / "photo.png"
    p.write_bytes(_save(Image.new("RGB", (10, 8), (0, 200, 0)), fmt))
    out = decode_image(p)
    assert out.shape == (8, 10, 3) and int(out[4, 4, 1]) > 150


@pytest.mark.parametrize("content,reason", [
    (b"\xff\xd8\xff" + b"\x00" * 60, "cannot read image: content is a JPEG that is damaged or cut off"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40, "HEIC/HEIF photo (iPhone)"),
])
def test_damaged_jpegs_and_heic_photos_get_their_own_reasons(tmp_path, content, reason):
    p = tmp_path / "IMG_0001.JPG"
    p.write_bytes(content)
    with pytest.raises(ImageDecodeError) as e:
        decode_image(p)
    assert reason in e.value.reason
