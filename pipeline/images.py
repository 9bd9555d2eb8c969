"""Safe image decoding: content sniffing, pixel limits before decode, EXIF, colour modes."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

# Formats we decode, by their magic bytes; the file name is never trusted.
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
_KNOWN_OTHER = ((b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"<", "text/HTML"))

MAX_PIXELS = 50_000_000  # refuse above this before decoding (decompression bombs)
MAX_SIDE = 2048  # larger photos are downscaled for processing
MIN_SIDE = 16


class ImageError(ValueError):
    """The input is not an image we can use; the message says why and what to do.

    ``kind`` says which way it failed (the HTTP API maps it to a status): ``empty``, ``type`` (not an
    image format we read), ``too_large`` (pixels over the limit), ``too_small``, ``corrupt``
    (truncated or undecodable), ``unreadable`` (the file cannot be opened).
    """

    def __init__(self, message: str, kind: str = "corrupt"):
        super().__init__(message)
        self.kind = kind


def sniff_format(head: bytes) -> str:
    """Image format from the first bytes of a file, or raise ImageError naming what it is."""
    if len(head) == 0:
        raise ImageError("empty file: send a JPEG, PNG or WebP photo", "empty")
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, what in _KNOWN_OTHER:
        if head.lstrip().startswith(magic):
            raise ImageError(f"this is {what}, not an image: send a JPEG, PNG or WebP photo", "type")
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        raise ImageError("this is a text file, not an image: send a JPEG, PNG or WebP photo", "type")
    raise ImageError("unrecognised file content: send a JPEG, PNG or WebP photo", "type")


def load_image(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """Decode a photo to an RGB uint8 array (H, W, 3), upright (EXIF orientation applied).

    Args:
        source: a path or the raw bytes of the file.
        max_pixels: width*height above which the image is refused before decoding.
        max_side: longer side of the returned array; larger photos are downscaled.
        min_side: shorter side below which the image is refused (nothing to find in it).

    Raises:
        ImageError: not an image, truncated, too large or too small.
    """
    data = source if isinstance(source, bytes) else _read(source)
    fmt = sniff_format(data[:16])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=[fmt])
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(
                    f"image is {w}x{h} = {w * h / 1e6:.0f} MP, over the {max_pixels / 1e6:.0f} MP "
                    "limit: send a smaller photo", "too_large")
            if min(w, h) < min_side:
                raise ImageError(f"image is {w}x{h}: at least {min_side} px a side is needed", "too_small")
            if fmt == "JPEG":  # decode at a reduced scale when we will downscale anyway
                img.draft("RGB", (max_side, max_side))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"image is over the {max_pixels / 1e6:.0f} MP limit ({e}): send a smaller photo",
                         "too_large") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"cannot decode this {fmt} file ({e}); it may be truncated or corrupt") from e
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _read(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(256 * 1024 * 1024)
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}", "unreadable") from e


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):  # transparent product shots: put them on white
        base = Image.new("RGB", img.size, (255, 255, 255))
        base.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return base
    return img.convert("RGB")  # L, I, F, CMYK, YCbCr


def crop_masked(
    image: np.ndarray,
    box,
    mask: np.ndarray | None = None,
    fill=(124, 116, 104),
    pad: float = 0.04,
) -> np.ndarray:
    """Cut a garment out of a photo: the box (a little padded), background set to ``fill``.

    Args:
        image: (H, W, 3) uint8 RGB.
        box: x0, y0, x1, y1 pixels.
        mask: (H, W) bool over the whole image, or None to keep all pixels of the box.
        fill: RGB of the neutral background (ImageNet mean, which normalises to 0).
    Returns:
        (h, w, 3) uint8 RGB crop.
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    px, py = pad * (x1 - x0), pad * (y1 - y0)
    x0, y0 = max(0, int(x0 - px)), max(0, int(y0 - py))
    x1, y1 = min(w, int(np.ceil(x1 + px))), min(h, int(np.ceil(y1 + py)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ImageError(f"box {box} is empty inside a {w}x{h} image", "too_small")
    crop = image[y0:y1, x0:x1].copy()
    if mask is not None:
        m = mask[y0:y1, x0:x1]
        if m.any():
            crop[~m] = fill
    return crop
