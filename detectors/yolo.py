"""Adapters for ultralytics: its ``Results`` never leave this module."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.types import Garments


def load_yolo(checkpoint: str | Path):
    """Load an ultralytics model from a local .pt (never a hub name: nothing downloads)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO checkpoint {path} does not exist")
    _import_ultralytics_quietly()
    from ultralytics import YOLO  # noqa: PLC0415 (heavy import, only for this backend)

    return YOLO(str(path))


def _import_ultralytics_quietly() -> None:
    """Import ultralytics without its run-time installs or its hook on ``PIL.Image.open``.

    On import it replaces ``Image.open`` with a wrapper that, for a file Pillow cannot identify,
    tries to pip-install pi-heif and then fails with ModuleNotFoundError: a corrupt upload would
    become a 500 and a download attempt. ``pipeline/images.py`` sniffs formats itself, so PIL's
    own ``open`` is put back and ultralytics' auto-install is off.
    """
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from PIL import Image  # noqa: PLC0415
    from ultralytics.utils import patches  # noqa: PLC0415

    Image.open = getattr(patches, "_image_open", Image.open)


def garments_from_ultralytics(result, class_map: dict[str, str | None], image_size) -> Garments:
    """Boxes of one ultralytics detection ``Results`` whose class maps to a category.

    Classes mapped to None (bags, belts, glasses...) are dropped.
    """
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return Garments.empty(image_size)
    xyxy = boxes.xyxy.cpu().numpy()
    cls = boxes.cls.cpu().numpy().astype(int)
    conf = boxes.conf.cpu().numpy()
    names = result.names
    keep, cats, labels = [], [], []
    for i, c in enumerate(cls):
        label = names[int(c)]
        cat = class_map.get(label)
        if cat:
            keep.append(i)
            cats.append(cat)
            labels.append(label)
    return Garments(xyxy[keep], cats, labels, conf[keep], image_size)


def largest_person_keypoints(result) -> np.ndarray | None:
    """(17, 3) keypoints (x, y, confidence) of the largest detected person, or None."""
    kps = result.keypoints
    if kps is None or kps.data is None or len(kps.data) == 0:
        return None
    data = kps.data.cpu().numpy()
    if data.shape[-1] == 2:
        data = np.concatenate([data, np.ones(data.shape[:-1] + (1,), data.dtype)], axis=-1)
    areas = (result.boxes.xywh[:, 2] * result.boxes.xywh[:, 3]).cpu().numpy()
    return data[int(np.argmax(areas))].astype(np.float32)
