"""ShopTheLook: photo -> pose check -> garments -> masks -> embeddings -> per-category search
-> rerank, with per-stage timings."""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from detectors.embedders import build_embedder
from detectors.garments import build_garment_detector, region
from detectors.masks import build_masker
from detectors.pose import build_pose_checker
from indexes.category import gpu_wanted
from indexes.index_set import IndexSet
from pipeline.config import load_config
from pipeline.images import crop_masked
from pipeline.types import CATEGORIES, Garments, LookResult, Match
from pipeline.weights import resolve


def _kwargs(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in ("backend", "weights")}


def build_models(cfg: dict) -> dict:
    """Build every stage's component from config; weights come from the manifest or a path."""
    device = cfg.get("device", "auto")
    emb_cfg, rr_cfg = cfg["embedder"], cfg.get("reranker")
    embedder = build_embedder(emb_cfg["backend"], checkpoint=resolve(emb_cfg.get("weights")),
                              device=device, **_kwargs(emb_cfg))
    reranker = None
    if rr_cfg:
        reranker = build_embedder(rr_cfg["backend"], checkpoint=resolve(rr_cfg.get("weights")),
                                  device=device, **_kwargs(rr_cfg))
    classifier = next((m for m in (embedder, reranker) if hasattr(m, "classify")), None)
    det_cfg = cfg["detector"]
    det_kw = _kwargs(det_cfg)
    if det_cfg.get("weights"):
        det_kw["checkpoint"] = resolve(det_cfg["weights"])
    detector = build_garment_detector(det_cfg["backend"], classifier=classifier, **det_kw)
    pose_cfg = cfg["pose"]
    pose_kw = _kwargs(pose_cfg)
    if pose_cfg.get("weights"):
        pose_kw["checkpoint"] = resolve(pose_cfg["weights"])
    mask_cfg = cfg["masks"]
    mask_kw = _kwargs(mask_cfg)
    if mask_cfg["backend"] == "sam":
        mask_kw["checkpoint"] = resolve(mask_cfg.get("weights"))
    return {
        "pose": build_pose_checker(pose_cfg["backend"], **pose_kw),
        "detector": detector,
        "masker": build_masker(mask_cfg["backend"], **mask_kw),
        "embedder": embedder,
        "reranker": reranker,
        "classifier": classifier,
    }


def model_signature(embedder, reranker) -> dict:
    """What an index records about the models its vectors come from."""
    def one(m):
        sig = {"backend": m.name, "dim": m.dim, "weights_sha256": m.weights_sha256,
               "image_size": m.preprocess.image_size}
        sig |= {"parts": m.parts} if m.parts > 1 else {}
        return sig | ({"catalog_views": list(m.catalog_views)} if m.catalog_views else {})
    sig = {"recall": one(embedder)}
    if reranker is not None:
        sig["rerank"] = one(reranker)
    return sig


def apply_index_config(index: IndexSet, cfg: dict) -> None:
    """Search parameters from config, and the GPU when asked for ("auto": when faiss sees one)."""
    for c in CATEGORIES:
        index[c].set_params(nprobe=cfg["nprobe"], rescore=cfg["rescore"])
        if gpu_wanted(cfg):
            index[c].use_gpu()


class ShopTheLook:
    """The query side. Build with :meth:`from_config`, call :meth:`look` on an RGB photo."""

    def __init__(self, models: dict, index: IndexSet, search: dict):
        self.models = models
        self.pose = models["pose"]
        self.detector = models["detector"]
        self.masker = models["masker"]
        self.embedder = models["embedder"]
        self.reranker = models["reranker"]
        self.classifier = models.get("classifier")
        self.index = index
        self.search = search
        self.one_pass = hasattr(self.reranker, "shares_forward") and self.reranker.shares_forward(self.embedder)

    @classmethod
    def from_config(cls, index_dir: str | Path, config: dict | None = None) -> ShopTheLook:
        cfg = config or load_config()
        models = build_models(cfg)
        index = IndexSet.load(Path(index_dir), model_signature(models["embedder"], models["reranker"]))
        apply_index_config(index, cfg["index"])
        return cls(models, index, cfg["search"])

    def look(self, image: np.ndarray, *, k: int | None = None, categories=CATEGORIES,
             category: str | None = None, filters: dict | None = None, box=None) -> LookResult:
        """Find the garments of an RGB uint8 (H, W, 3) photo and their catalog matches.

        Args:
            k: matches per garment (config ``search.k`` by default).
            categories: only garments of these categories are searched.
            category: for a photo without a person (one product), the category when the caller
                knows it (a product page); otherwise our class head decides.
            filters: {brand, price_min, price_max} applied to every garment's matches.
            box: x0, y0, x1, y1 pixels of a region the user drew: it is searched as the one
                garment (``category`` or our class head names it) instead of detecting garments.
        """
        k = k or self.search["k"]
        timings: dict[str, float] = {}

        @contextmanager
        def stage(name):
            t = time.perf_counter()
            yield
            timings[name] = round(1000 * (time.perf_counter() - t), 2)

        with stage("pose"):
            verdict = self.pose.check(image)
        with stage("detect"):
            if box is not None:
                garments = region(image, box, self.classifier, category)
            else:
                garments = self.detector.detect(image, verdict)
            if category is not None and not verdict.person:
                garments = dataclasses.replace(garments, categories=[category] * len(garments))
            garments = garments[np.isin(garments.categories, list(categories))]
        with stage("mask"):
            garments = self.masker.mask(image, garments, verdict)
        with stage("embed"):
            crops = [crop_masked(image, g.box, g.mask, self.embedder.preprocess.fill) for g in garments]
            if self.one_pass:  # reid + reid-local of the same weights: both rows from one forward
                vectors, rerank = self.reranker.embed_with_global(crops)
            else:
                vectors = self.embedder.embed(crops)
        with stage("rerank_embed"):
            if not self.one_pass:
                rerank = self.reranker.embed(crops) if self.reranker is not None else None
        with stage("search"):
            matches = self._search(garments, vectors, rerank, k, filters)
        return LookResult(verdict, garments, matches, timings)

    def similar(self, product_id: str, k: int | None = None, filters: dict | None = None) -> tuple[str, list[Match]]:
        """"More like this": the products nearest to an indexed product, itself excluded.

        Returns (its category, matches). Raises KeyError when the product is not indexed.
        """
        k = k or self.search["k"]
        index = self.index
        category = next((c for c in CATEGORIES if product_id in index[c]), None)
        if category is None:
            raise KeyError(product_id)
        ci = index[category]
        row = np.array([ci.row_of()[product_id]])
        vec = ci.vectors.take(row)[0].astype(np.float32)
        # a stored catalog row as the query: its parts weigh alike (1 / parts each)
        rr = ci.rerank.take(row)[0].astype(np.float32) / ci.rerank_parts if ci.rerank_dim else None
        cands = index.search(category, vec / np.linalg.norm(vec), k + 1, rerank_query=rr,
                             k_recall=self.search["k_recall"], rerank_weight=self.search["rerank_weight"],
                             filters=filters)
        cands = [c for c in cands if c.product_id != product_id][:k]
        meta = index.store.get([c.product_id for c in cands])
        return category, [Match(c.product_id, c.score, c.recall_score, c.rerank_score, meta.get(c.product_id, {}))
                          for c in cands]

    def _search(self, garments: Garments, vectors, rerank, k: int, filters: dict | None) -> list[list[Match]]:
        out = []
        for i, g in enumerate(garments):
            cands = self.index.search(
                g.category, vectors[i], k, rerank_query=None if rerank is None else rerank[i],
                k_recall=self.search["k_recall"], rerank_weight=self.search["rerank_weight"], filters=filters)
            meta = self.index.store.get([c.product_id for c in cands])
            out.append([Match(c.product_id, c.score, c.recall_score, c.rerank_score, meta.get(c.product_id, {}))
                        for c in cands])
        return out
