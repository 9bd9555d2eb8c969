import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")  # ultralytics: no update checks (no network here)

DATA = Path(os.environ.get("SHOPFLUENCE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
PEOPLE = DATA / "people"
NO_PERSON = DATA / "no-person"
CATALOG = DATA / "clothing-dataset-small"
FULL_BODY = ["coco_000000000785.jpg", "coco_000000197388.jpg", "crowdpose_103319.jpg",
             "ochuman_000817.jpg", "ochuman_003799.jpg"]

if not CATALOG.is_dir():
    raise RuntimeError(f"the real test data is missing: {DATA} (set SHOPFLUENCE_DATA)")


def png_header(w: int, h: int) -> bytes:
    """A tiny, valid PNG file that claims to be w x h (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="session")
def people_photo():
    from pipeline.images import load_image

    return load_image(PEOPLE / "ochuman_000817.jpg")


@pytest.fixture(scope="session")
def reid_weights():
    from pipeline.weights import slot

    return slot("reid-v2").require()


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
