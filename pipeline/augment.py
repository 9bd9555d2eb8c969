"""Realistic re-photographs of a product photo.

Two families that share no parameters: ``TrainRephoto`` (what the model learns to ignore) and
``EvalRephoto`` (the held-out query protocol: stronger crop, rotation, cast shadow, a real
photo as the new background) so the evaluation does not reward memorised augmentations.
All work on (3, H, W) uint8 tensors and return a letterboxed square of ``size``.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

from detectors.preprocess import IMAGENET_MEAN, letterbox

_FILL = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)


def _random_crop(img: torch.Tensor, g: torch.Generator, scale, ratio) -> torch.Tensor:
    _, h, w = img.shape
    for _ in range(10):
        area = h * w * _uniform(g, *scale)
        r = math.exp(_uniform(g, math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(area * r))), int(round(math.sqrt(area / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x0 = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            y0 = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            return img[:, y0:y0 + ch, x0:x0 + cw]
    return img


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _chance(g: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=g)) < p


def _soft_ellipse(h: int, w: int, g: torch.Generator, spread: float) -> torch.Tensor:
    """An (H, W) alpha in [0, 1]: 1 inside a centred ellipse, fading out at its border."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    ry, rx = _uniform(g, 0.8, 1.0), _uniform(g, 0.75, 1.0)
    d = (xx / rx) ** 2 + (yy / ry) ** 2
    return (1 - (d - 1 + spread) / spread).clamp(0, 1)


def _composite(fg: torch.Tensor, bg: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    bg = TF.resize(bg, list(fg.shape[1:]), antialias=True)
    return fg * alpha + bg * (1 - alpha)


class TrainRephoto:
    """Training views: random resized crop, perspective, a small tilt, colour/light, blur, JPEG,
    background.

    ``backgrounds`` is a callable returning a (3, h, w) float image in [0, 1] (another
    catalog photo); with probability ``p_background`` the product's surroundings are
    replaced by it or by the neutral fill the query side uses for masked crops.
    """

    def __init__(self, size: int, backgrounds=None, p_background: float = 0.3):
        self.size = size
        self.backgrounds = backgrounds
        self.p_background = p_background
        self.color = v2.ColorJitter(0.4, 0.4, 0.35, 0.04)
        self.perspective = v2.RandomPerspective(0.3, p=0.4, fill=[float(v) for v in IMAGENET_MEAN])
        self.tilt = v2.RandomApply([v2.RandomRotation(12, fill=[float(v) for v in IMAGENET_MEAN])], p=0.3)
        self.blur = v2.RandomApply([v2.GaussianBlur(5, (0.1, 1.6))], p=0.25)
        self.jpeg = v2.RandomApply([v2.JPEG((35, 95))], p=0.4)

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = _random_crop(img, g, (0.4, 1.0), (0.7, 1.4)).float() / 255
        if _chance(g, self.p_background):
            alpha = _soft_ellipse(*x.shape[1:], g, spread=0.25)
            bg = self.backgrounds() if self.backgrounds is not None and _chance(g, 0.6) else None
            x = _composite(x, bg if bg is not None else _FILL.expand_as(x), alpha)
        if _chance(g, 0.3):
            x = x.flip(-1)
        x = letterbox(x, self.size, _FILL)
        x = self.tilt(self.perspective(x))
        x = self.color(x)
        if _chance(g, 0.05):
            x = TF.rgb_to_grayscale(x, 3)
        x = self.blur(x)
        x = (self.jpeg((x.clamp(0, 1) * 255).to(torch.uint8))).float() / 255
        return x


class EvalRephoto:
    """Held-out query views, deterministic for a seed: what a shopper's photo of the product
    looks like (partial framing, tilt, a cast shadow, another place behind it)."""

    def __init__(self, size: int, backgrounds: list[torch.Tensor]):
        self.size = size
        self.backgrounds = backgrounds

    def __call__(self, img: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = _random_crop(img, g, (0.4, 0.75), (0.6, 1.6)).float() / 255
        x = TF.rotate(x, _uniform(g, -25, 25), expand=True, fill=[float(v) for v in IMAGENET_MEAN])
        x = self._shadow(x, g)
        bg = self.backgrounds[int(torch.randint(0, len(self.backgrounds), (1,), generator=g))]
        c, h, w = x.shape
        top, left = int(torch.randint(0, 1 + h // 2, (1,), generator=g)), int(torch.randint(0, 1 + w // 2, (1,), generator=g))
        bg_crop = TF.resized_crop(bg, top, left, max(8, bg.shape[1] // 2), max(8, bg.shape[2] // 2), [h, w], antialias=True)
        x = _composite(x, bg_crop, _soft_ellipse(h, w, g, spread=0.35))
        x = TF.adjust_brightness(x, _uniform(g, 0.7, 1.25))
        x = letterbox(x, self.size, _FILL)
        q = int(torch.randint(25, 60, (1,), generator=g))
        return TF.jpeg((x.clamp(0, 1) * 255).to(torch.uint8), q).float() / 255

    @staticmethod
    def _shadow(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        _, h, w = x.shape
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        a = _uniform(g, 0, 2 * math.pi)
        edge = (xx * math.cos(a) + yy * math.sin(a) - _uniform(g, -0.3, 0.5)) / 0.15
        shade = 1 - _uniform(g, 0.35, 0.6) * torch.sigmoid(edge)
        return x * shade
