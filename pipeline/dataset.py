"""The catalog photo folders we train, evaluate and demo on (folder per class)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from detectors.reid import CLASS_CATEGORY

DEFAULT_DATA = Path(os.environ.get("SHOPFLUENCE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


@dataclass(frozen=True)
class CatalogPhoto:
    """One product photo: its path, its class folder and the category that class maps to."""

    path: Path
    label: str

    @property
    def category(self) -> str | None:
        return CLASS_CATEGORY.get(self.label, self.label if self.label in ("upper", "lower", "footwear", "dress") else None)

    @property
    def product_id(self) -> str:
        return self.path.stem


def list_photos(folder: str | Path) -> list[CatalogPhoto]:
    """Photos under ``folder/<class>/``, sorted by path so every run sees the same order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"catalog folder {folder} does not exist: point to a folder with one sub-folder per "
            "class, e.g. ../shared/data/clothing-dataset-small/test"
        )
    return [
        CatalogPhoto(p, p.parent.name)
        for p in sorted(folder.glob("*/*"))
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]


def clothing_split(split: str, root: str | Path | None = None) -> list[CatalogPhoto]:
    """One split (train / validation / test) of clothing-dataset-small."""
    root = Path(root) if root else DEFAULT_DATA / "clothing-dataset-small"
    return list_photos(root / split)


def load_small(photos: list[CatalogPhoto], longer_side: int, desc: str = "decode") -> list[torch.Tensor]:
    """Decode photos to (3, h, w) uint8 tensors with the longer side at most ``longer_side``.

    Uses JPEG draft mode, so a few thousand photos decode in seconds.
    """
    out = []
    for p in tqdm(photos, desc=desc, unit="img", leave=False, disable=None):
        rgb = open_small(p.path, longer_side, Image.Resampling.BILINEAR)
        out.append(torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1))
    return out


def open_small(path: Path, longer_side: int, resample) -> Image.Image:
    """An RGB photo with the longer side at most ``longer_side`` (JPEG draft mode: fast)."""
    with Image.open(path) as src:
        src.draft("RGB", (longer_side, longer_side))
        rgb = src.convert("RGB")
    rgb.thumbnail((longer_side, longer_side), resample)
    return rgb


def pack_photos(out: Path, data: str | Path | None = None, longer_side: int = 256,
                quality: int = 90) -> tuple[int, int, list[str]]:
    """Copy every photo of clothing-dataset-small and no-person, shrunk to ``longer_side``.

    Keeps the folder layout, so ``SHOPFLUENCE_DATA=out`` trains and evaluates on the copy (how
    the photos travel to a GPU machine). A photo that does not decode is skipped and reported.
    Returns (photos written, bytes, ["path: reason" of each skipped photo]).
    """
    src = Path(data) if data else DEFAULT_DATA
    paths = [p for p in sorted((src / "clothing-dataset-small").glob("*/*/*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    paths += [p for p in sorted((src / "no-person").glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise FileNotFoundError(f"no photos under {src}/clothing-dataset-small or {src}/no-person")
    written, total, skipped = 0, 0, []
    for p in tqdm(paths, desc="pack", unit="img", disable=None):
        try:
            rgb = open_small(p, longer_side, Image.Resampling.LANCZOS)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append(f"{p}: {type(e).__name__}: {e}")
            continue
        dst = out / p.relative_to(src).with_suffix(".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        rgb.save(dst, quality=quality)
        written += 1
        total += dst.stat().st_size
    return written, total, skipped
