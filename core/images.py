"""The one image-decoding path of Transfer Lab.

Every image the app or the command line touches (scanning a dataset, training,
previews, prediction) goes through :func:`decode_image`, so a file that decodes
here decodes everywhere, and every image reaches the model as 8-bit RGB that
looks as the person sees it on screen (EXIF orientation applied, transparency
over white, 16-bit and CMYK converted).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Phone photos are ~12 MP; anything past this is a decompression bomb, not a photo. Pillow
# itself only refuses at twice its limit, so decode_image checks the size before decoding.
MAX_PIXELS = 200_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# What a file's first bytes say it is, for readable reasons when Pillow refuses it.
_MAGIC = [
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x89HDF", "an HDF5 file"),
    (b"<!DOCTYPE", "an HTML page"),
    (b"<html", "an HTML page"),
    (b"{", "text (JSON?)"),
]


class ImageDecodeError(Exception):
    """A file is not a usable image; ``reason`` says why in plain words."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


# Image formats Pillow knows but could not open: the file is damaged, or a format it cannot read.
_IMAGE_MAGIC = [
    (b"\xff\xd8\xff", "a JPEG that is damaged or cut off"),
    (b"\x89PNG\r\n\x1a\n", "a PNG that is damaged or cut off"),
    (b"GIF8", "a GIF that is damaged or cut off"),
]


def describe_bytes(head: bytes) -> str:
    """A guess, from the first bytes, at what a non-image file is."""
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1", b"ftypheim", b"ftypheis"):
        return "a HEIC/HEIF photo (iPhone), which Pillow cannot read; export it as JPEG"
    if head[4:12] == b"ftypavif":
        return "an AVIF image, which this Pillow cannot read; export it as JPEG or PNG"
    for magic, what in _IMAGE_MAGIC + _MAGIC:
        if head.startswith(magic):
            return what
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return "text"
    return "unknown binary data"


def _open(source) -> Image.Image:
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ImageDecodeError("a folder, not an image file")
        try:
            if path.stat().st_size == 0:
                raise ImageDecodeError("empty file (0 bytes)")
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError as e:
            raise ImageDecodeError(f"cannot read file ({e.strerror or e})") from None
    else:
        head = source.read(64)
        source.seek(0)
        if not head:
            raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our limit is MAX_IMAGE_PIXELS
            return Image.open(source)
    except UnidentifiedImageError:
        what = describe_bytes(head)
        kind = "cannot read image" if what.startswith(("a JPEG", "a PNG", "a GIF", "a HEIC", "an AVIF")) else "not an image"
        raise ImageDecodeError(f"{kind}: content is {what}") from None
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"image too large (over {MAX_PIXELS / 1e6:.0f} megapixels)") from None
    except OSError as e:
        if "truncated" in str(e).lower():
            raise ImageDecodeError("truncated image (the file ends early)") from None
        raise ImageDecodeError(f"cannot read file ({e})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB as it would look on screen."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif mode == "F" and arr.size and 0 <= arr.min() and arr.max() <= 1:
            arr = arr * 255.0  # floating point images keep 0..1 for black..white
        elif arr.max() > 255 or arr.min() < 0:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) * (255.0 / (hi - lo or 1.0))
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def decode_image(source, size: int | None = None) -> np.ndarray:
    """Decode a file path, bytes or file object to an ``(H, W, 3)`` uint8 RGB array.

    With ``size`` the image is centre-cropped to a square and resized
    (bilinear) to ``size`` × ``size``, as Teachable Machine does: shapes keep
    their proportions (squashing a 3:4 phone photo cost 3 points of validation
    accuracy on the rock-paper-scissors photos). JPEGs are decoded at a reduced
    scale first when they are much larger, several times faster for phone
    photos. Raises :class:`ImageDecodeError` with a reason.
    """
    img = _open(source)
    if img.width * img.height > MAX_PIXELS:
        w, h = img.size
        img.close()
        raise ImageDecodeError(f"image too large ({w}x{h} pixels, over {MAX_PIXELS / 1e6:.0f} megapixels)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if size and img.format == "JPEG":
                # draft() picks the smallest DCT scale that stays >= the request.
                img.draft("RGB", (size, size))
            img.seek(0)  # first frame of an animation
            img.load()  # full decode now: a truncated file fails here, not mid-epoch
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if size:
                img = ImageOps.fit(img, (size, size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError:
        raise ImageDecodeError(f"image too large (over {MAX_PIXELS / 1e6:.0f} megapixels)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        msg = str(e)
        if "truncated" in msg.lower():
            raise ImageDecodeError("truncated image (the file ends early)") from None
        raise ImageDecodeError(f"cannot decode image ({msg or type(e).__name__})") from None
    finally:
        img.close()
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageDecodeError(f"unexpected image shape {arr.shape}")
    return arr


def image_info(path) -> tuple[str | None, int, int]:
    """``(format, width, height)`` from a file's header (no pixel decode), or ``(None, 0, 0)``."""
    try:
        with Image.open(path) as img:
            return img.format, img.width, img.height
    except Exception:
        return None, 0, 0
