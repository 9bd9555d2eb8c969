"""Image embedders: ``embed(crops) -> float32 (n, d)`` L2-normalised, one batched forward.

Backends (registry ``EMBEDDERS``): ``reid`` (our own trained model, the offline default),
``reid-local`` (the same model's local descriptors, the default reranker), ``fashion-clip``
(open_clip, with ``embed_text``) and ``dinov2`` (official checkpoints via timm). Each takes
``checkpoint=None`` to mean untrained (random init), for tests and timing only.

A row may hold ``parts`` sub-vectors (``reid-local``: one per cell of the feature map); the
index scores such rows with :func:`indexes.category.part_similarity` (plain cosine when
``parts`` is 1).
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
    dim: int  # the length of a row (parts x the length of a part)
    preprocess: PreprocessCfg
    parts: int = 1

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

    def merge_photos(self, rows: np.ndarray) -> np.ndarray:
        """One row for a product from the rows of its photos (n, dim): their mean, re-normalised."""
        v = rows.mean(axis=0)
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)

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


class ReidLocalEmbedder(ReidEmbedder):
    """Our model's local descriptors, for the rerank: each cell of the backbone's last feature
    map (7 x 7 at 224 px) through the embedding head (neck + BN), L2-normalised.

    A query row is its ``parts`` descriptors, each scaled by its cell's share of the feature
    map's activation (the cells the network attends to weigh most, the padding and background
    least); a catalog row is its descriptors unscaled. :func:`indexes.category.part_similarity`
    then gives sum_i w_i max_j <q_i, g_j>: every part of the query finds its best match
    anywhere in the catalog photo (a Chamfer similarity), so a shopper's photo of part of a
    garment, shifted or rotated, still meets the same print, logo or stitching.
    """

    name = "reid-local"

    def __init__(self, **kw):
        if kw.pop("catalog_views", None):
            raise ValueError("reid-local takes no catalog_views: each part already finds its best match")
        super().__init__(**kw)
        s = self.preprocess.image_size
        with torch.inference_mode():
            cells = self.model.backbone(torch.zeros(1, 3, s, s, device=self.device, dtype=next(self.model.parameters()).dtype))
        self.parts = cells.shape[2] * cells.shape[3]
        self.part_dim = self.config["embed_dim"]
        self.dim = self.parts * self.part_dim

    def descriptors(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(unit descriptors (n, parts, part_dim) float32, cell weights (n, parts) summing to 1)."""
        return self._pass(crops)[1:]

    def shares_forward(self, other: Embedder) -> bool:
        """Whether ``other`` is the global ``reid`` embedding of the same weights and input: then
        :meth:`embed_with_global` gives both rows from one forward pass."""
        return (type(other) is ReidEmbedder and other.weights_sha256 == self.weights_sha256
                and other.preprocess == self.preprocess and other.device == self.device)

    def embed_with_global(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The query side of both stages in one pass: (global unit rows (n, part_dim), :meth:`embed`'s rows)."""
        glob, desc, w = self._pass(crops)
        return glob, (desc * w[:, :, None]).reshape(len(crops), self.dim)

    @torch.inference_mode()
    def _pass(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One backbone pass: global embeddings (as ``reid`` gives), descriptors, cell weights."""
        m, d = self.model, self.part_dim
        glob = [np.zeros((0, d), np.float32)]
        desc, weights = [np.zeros((0, self.parts, d), np.float32)], [np.zeros((0, self.parts), np.float32)]
        for i in range(0, len(crops), self.batch_size):
            x = to_batch(crops[i:i + self.batch_size], self.preprocess).to(self.device)
            fmap = m.backbone(x.half() if self.half else x)
            glob.append(torch.nn.functional.normalize(m.head(fmap).float(), dim=1).cpu().numpy())
            cells = fmap.flatten(2).transpose(1, 2)  # (n, parts, channels)
            n = len(cells)
            z = m.bn(m.neck(cells.reshape(n * self.parts, -1))).float()
            desc.append(torch.nn.functional.normalize(z, dim=1).reshape(n, self.parts, d).cpu().numpy())
            w = cells.float().norm(dim=2)
            weights.append((w / w.sum(1, keepdim=True).clamp(min=1e-12)).cpu().numpy())
        return np.concatenate(glob), np.concatenate(desc), np.concatenate(weights)

    def embed(self, crops: list[np.ndarray]) -> np.ndarray:
        """The query side: descriptors scaled by their cell weights, flattened to (n, dim)."""
        return self.embed_with_global(crops)[1]

    def embed_catalog(self, crops: list[np.ndarray]) -> np.ndarray:
        """The catalog side: unit descriptors, flattened to (n, dim)."""
        return self.descriptors(crops)[0].reshape(len(crops), self.dim)

    def merge_photos(self, rows: np.ndarray) -> np.ndarray:
        """A product's first photo: descriptors of different photos do not average."""
        return np.asarray(rows[0], np.float32)


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


EMBEDDERS = {"reid": ReidEmbedder, "reid-local": ReidLocalEmbedder, "fashion-clip": OpenClipEmbedder, "dinov2": Dinov2Embedder}


def build_embedder(backend: str, *, checkpoint: Path | None = None, **kw) -> Embedder:
    """Build an embedder by registry name; ``checkpoint=None`` means untrained."""
    if backend not in EMBEDDERS:
        raise ValueError(f"unknown embedder '{backend}'; choose one of {sorted(EMBEDDERS)}")
    return EMBEDDERS[backend](checkpoint=checkpoint, **kw)
