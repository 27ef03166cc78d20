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
