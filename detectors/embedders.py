"""Image embedders: ``embed(crops) -> float32 (n, d)`` L2-normalised, one batched forward.

Backends (registry ``EMBEDDERS``): ``reid`` (our own trained model, the offline default),
``fashion-clip`` (open_clip, with ``embed_text``) and ``dinov2`` (official checkpoints via timm).
Each takes ``checkpoint=None`` to mean untrained (random init), for tests and timing only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detectors.preprocess import PreprocessCfg, to_batch
from detectors.reid import CLASS_CATEGORY, build_reid
from pipeline.weights import sha256_of

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Embedder:
    """Shared batching, device and fp16 handling; backends implement ``_forward``."""

    name: str
    dim: int
    preprocess: PreprocessCfg

    def __init__(self, model: torch.nn.Module, *, device: str = "auto", batch_size: int = 64,
                 checkpoint: Path | None = None, catalog_views: tuple[float, ...] = ()):
        self.device = _pick_device(device)
        self.catalog_views = tuple(float(f) for f in catalog_views)
        if not all(0 < f < 1 for f in self.catalog_views):
            raise ValueError(f"catalog_views are centre-crop fractions in (0, 1), got {catalog_views!r}")
        self.half = self.device.type == "cuda"  # fp16 on GPU, fp32 on CPU
        self.model = model.eval().to(self.device)
        if self.half:
            self.model.half()
        self.batch_size = batch_size
        self.checkpoint = checkpoint
        self.weights_sha256 = sha256_of(checkpoint) if checkpoint else "untrained"

    @torch.inference_mode()
    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """Embed RGB uint8 crops (h, w, 3) of any size: float32 (n, dim), rows of unit norm."""
        out = [np.zeros((0, self.dim), np.float32)]
        for i in range(0, len(crops), self.batch_size):
            x = to_batch(crops[i:i + self.batch_size], self.preprocess).to(self.device)
            z = self._forward(x.half() if self.half else x).float()
            out.append(torch.nn.functional.normalize(z, dim=1).cpu().numpy())
        return np.concatenate(out)

    def embed_catalog(self, crops: list[np.ndarray]) -> np.ndarray:
        """The catalog side: each crop with its centre crops (``catalog_views``, fractions of each
        side) in one batched call, their unit embeddings averaged into one unit row per crop.

        A shopper's photo usually shows part of a garment while a catalog photo shows all of it;
        the centre views pull the catalog vector towards the garment's own surface. Costs
        ``1 + len(catalog_views)`` forwards a catalog photo, nothing on the query side.
        """
        if not self.catalog_views:
            return self.embed(crops)
        views = [c for crop in crops for c in (crop, *(center_crop(crop, f) for f in self.catalog_views))]
        z = self.embed(views).reshape(len(crops), 1 + len(self.catalog_views), self.dim).sum(1)
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def center_crop(crop: np.ndarray, fraction: float) -> np.ndarray:
    """The centred ``fraction`` of each side of an (h, w, 3) crop (at least 1 pixel)."""
    h, w = crop.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    top, left = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(crop[top:top + ch, left:left + cw])


class ReidEmbedder(Embedder):
    """Our own model: embedding plus a product-class head (``classify``)."""

    name = "reid"

    def __init__(self, *, checkpoint: Path | None = None, image_size: int | None = None, **kw):
        model, self.config = build_reid(checkpoint=checkpoint)
        self.dim = self.config["embed_dim"]
        self.classes = tuple(self.config["classes"])
        self.preprocess = PreprocessCfg(image_size=image_size or self.config["image_size"])
        super().__init__(model, checkpoint=checkpoint, **kw)

    def _forward(self, x):
        return self.model(x)[0]

    @torch.inference_mode()
    def classify(self, crops: list[np.ndarray]) -> np.ndarray:
        """Class probabilities (n, len(classes)) float32, classes in ``self.classes`` order."""
        out = [np.zeros((0, len(self.classes)), np.float32)]
        for i in range(0, len(crops), self.batch_size):
            x = to_batch(crops[i:i + self.batch_size], self.preprocess).to(self.device)
            logits = self.model(x.half() if self.half else x)[1].float()
            out.append(logits.softmax(1).cpu().numpy())
        return np.concatenate(out)

    def category_probs(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """Probability of each of our categories (hat counts as none), from ``classify``'s output."""
        cats: dict[str, np.ndarray] = {}
        for j, cls in enumerate(self.classes):
            cat = CLASS_CATEGORY.get(cls)
            if cat:
                cats[cat] = cats.get(cat, 0) + probs[:, j]
        return cats


class OpenClipEmbedder(Embedder):
    """FashionCLIP (or any CLIP) through open_clip, from a local open_clip checkpoint."""

    name = "fashion-clip"

    def __init__(self, *, checkpoint: Path | None = None, arch: str = "ViT-B-32", **kw):
        import open_clip  # noqa: PLC0415 (heavy; only when this backend is chosen)

        model = open_clip.create_model(arch, pretrained=str(checkpoint) if checkpoint else None)
        self.tokenizer = open_clip.get_tokenizer(arch)
        size = model.visual.image_size
        self.preprocess = PreprocessCfg(image_size=size[0] if isinstance(size, tuple) else size,
                                        mean=CLIP_MEAN, std=CLIP_STD, resize="letterbox")
        self.dim = model.text_projection.shape[1] if model.text_projection is not None else model.visual.output_dim
        super().__init__(model, checkpoint=checkpoint, **kw)

    def _forward(self, x):
        return self.model.encode_image(x)

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Embed text queries into the image space: float32 (n, dim), unit rows."""
        tokens = self.tokenizer(texts).to(self.device)
        z = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(z, dim=1).cpu().numpy()


class Dinov2Embedder(Embedder):
    """DINOv2 ViT-S/14 or ViT-B/14 from the official .pth, through timm's converter."""

    name = "dinov2"

    def __init__(self, *, checkpoint: Path | None = None, arch: str = "vit_small_patch14_dinov2",
                 image_size: int = 224, **kw):
        import timm  # noqa: PLC0415

        overlay = {"file": str(checkpoint)} if checkpoint else None
        model = timm.create_model(arch, pretrained=checkpoint is not None, pretrained_cfg_overlay=overlay,
                                  num_classes=0, img_size=image_size)
        self.dim = model.num_features
        self.preprocess = PreprocessCfg(image_size=image_size)
        super().__init__(model, checkpoint=checkpoint, **kw)

    def _forward(self, x):
        return self.model(x)


EMBEDDERS = {"reid": ReidEmbedder, "fashion-clip": OpenClipEmbedder, "dinov2": Dinov2Embedder}


def build_embedder(backend: str, *, checkpoint: Path | None = None, **kw) -> Embedder:
    """Build an embedder by registry name; ``checkpoint=None`` means untrained."""
    if backend not in EMBEDDERS:
        raise ValueError(f"unknown embedder '{backend}'; choose one of {sorted(EMBEDDERS)}")
    return EMBEDDERS[backend](checkpoint=checkpoint, **kw)
