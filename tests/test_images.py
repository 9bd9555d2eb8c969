import io

import numpy as np
import pytest
from PIL import Image

from pipeline.images import ImageError, crop_masked, load_image

from .conftest import PEOPLE, png_header


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_real_photo_decodes_to_rgb_uint8():
    a = load_image(PEOPLE / "coco_000000000785.jpg")
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and a.shape[:2] == (425, 640)


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"\x00\x01\x02garbage" * 10, "unrecognised"),
    (b"hello, this is a text file\n" * 20, "text"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
    (b"PK\x03\x04" + b"\x00" * 60, "ZIP"),
])
def test_not_an_image_is_refused_by_content(data, words):
    with pytest.raises(ImageError, match=words):
        load_image(data)


def test_text_named_jpg_is_refused(tmp_path):
    p = tmp_path / "photo.jpg"
    p.write_text("not really a photo")
    with pytest.raises(ImageError):
        load_image(p)


def test_truncated_jpeg_is_a_clear_error():
    data = (PEOPLE / "coco_000000000785.jpg").read_bytes()
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 3])


def test_tiny_image_is_refused():
    with pytest.raises(ImageError, match="at least"):
        load_image(_encode(Image.new("RGB", (1, 1)), "PNG"))


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(ImageError, match="MP limit"):
        load_image(png_header(30000, 30000))
    with pytest.raises(ImageError, match="9000x9000 = 81 MP"):  # under Pillow's own bomb limit
        load_image(png_header(9000, 9000))


def test_large_photo_is_downscaled():
    img = Image.new("RGB", (4000, 3000), (200, 10, 10))
    a = load_image(_encode(img, "JPEG"), max_side=1024)
    assert max(a.shape[:2]) == 1024


def test_modes_are_converted_to_rgb():
    src = Image.open(PEOPLE / "fld_img_00000128.jpg")
    for mode in ("L", "CMYK", "RGBA", "P", "LA"):
        fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
        a = load_image(_encode(src.convert(mode), fmt))
        assert a.shape == (250, 200, 3) and a.dtype == np.uint8


def test_transparent_background_becomes_white():
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert (load_image(_encode(img, "PNG")) == 255).all()


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (120, 60), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    a = load_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert a.shape[:2] == (120, 60)


def test_crop_masked_fills_background():
    img = np.full((100, 100, 3), 255, np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[40:60, 40:60] = True
    c = crop_masked(img, (20, 20, 80, 80), mask, fill=(1, 2, 3), pad=0)
    assert c.shape == (60, 60, 3)
    assert (c[0, 0] == (1, 2, 3)).all() and (c[30, 30] == 255).all()


def test_a_read_only_photo_goes_into_a_batch_without_a_warning():
    import warnings

    from detectors.preprocess import PreprocessCfg, to_batch

    img = np.asarray(Image.open(PEOPLE / "fld_img_00000128.jpg").convert("RGB"))  # read-only, as decoded
    assert not img.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writable arrays; a warning fails the test
        x = to_batch([img], PreprocessCfg(image_size=64))
    assert x.shape == (1, 3, 64, 64) and not img.flags.writeable
