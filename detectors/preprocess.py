"""Frozen preprocessing shared by the catalog side and the query side (like timm's PretrainedCfg)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessCfg:
    """How an RGB crop becomes a model input.

    ``resize``: ``letterbox`` pads the crop to a square with the mean colour (which normalises
    to 0) and keeps its aspect; ``squash`` stretches it; ``center`` resizes the short side and
    crops the centre (CLIP's own preprocessing).
    """

    image_size: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "letterbox"

    @property
    def fill(self) -> tuple[int, int, int]:
        return tuple(int(round(255 * m)) for m in self.mean)


def letterbox(image: torch.Tensor, size: int, fill: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Pad a (C, H, W) float tensor to a centred square, then resize it to ``size``."""
    c, h, w = image.shape
    side = max(h, w)
    out = torch.empty((c, side, side), dtype=image.dtype)
    out[:] = torch.as_tensor(fill, dtype=image.dtype).reshape(-1, 1, 1) if not isinstance(fill, float) else fill
    top, left = (side - h) // 2, (side - w) // 2
    out[:, top:top + h, left:left + w] = image
    return F.interpolate(out[None], size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False)[0]


def to_batch(crops: list[np.ndarray], cfg: PreprocessCfg) -> torch.Tensor:
    """Stack RGB uint8 crops (h, w, 3) into a normalised float32 batch (n, 3, S, S)."""
    mean = torch.tensor(cfg.mean).reshape(3, 1, 1)
    std = torch.tensor(cfg.std).reshape(3, 1, 1)
    out = []
    for crop in crops:
        # a decoded photo can be read-only (np.asarray of a PIL image): copy only then
        t = torch.from_numpy(np.require(crop, requirements=["C", "W"])).permute(2, 0, 1).float() / 255.0
        if cfg.resize == "letterbox":
            t = letterbox(t, cfg.image_size, mean)
        elif cfg.resize == "squash":
            t = F.interpolate(t[None], size=(cfg.image_size,) * 2, mode="bilinear", antialias=True)[0]
        elif cfg.resize == "center":
            h, w = t.shape[1:]
            s = cfg.image_size / min(h, w)
            t = F.interpolate(t[None], size=(max(cfg.image_size, round(h * s)), max(cfg.image_size, round(w * s))),
                              mode="bicubic", antialias=True)[0].clamp(0, 1)
            top, left = (t.shape[1] - cfg.image_size) // 2, (t.shape[2] - cfg.image_size) // 2
            t = t[:, top:top + cfg.image_size, left:left + cfg.image_size]
        else:
            raise ValueError(f"unknown resize mode {cfg.resize!r}")
        out.append((t - mean) / std)
    if not out:
        return torch.zeros((0, 3, cfg.image_size, cfg.image_size))
    return torch.stack(out)
