"""Pipeline configuration: defaults merged with a TOML file (``--config``)."""

from __future__ import annotations

import copy
import tomllib

DEFAULTS = {
    "pose": {"backend": "mediapipe"},
    # yolo: {"backend": "yolo", "weights": "yolo-garments", "class_map": "deepfashion2"}
    "detector": {"backend": "pose-regions", "dress_threshold": 0.5},
    # sam: {"backend": "sam", "weights": "sam-vit-b", "arch": "vit_b"}
    "masks": {"backend": "person"},
    # fashion-clip: {"backend": "fashion-clip", "weights": "fashion-clip", "arch": "ViT-B-16"}
    # catalog_views: centre crops (fraction of each side) embedded with each catalog photo and
    # averaged into its vector (Embedder.embed_catalog); the query side is unchanged
    "embedder": {"backend": "reid", "weights": "reid-v2", "catalog_views": [0.8]},
    # reid-local: our model's 7x7 local descriptors, scored by a weighted Chamfer similarity
    # (indexes/category.py part_similarity); a global alternative, the previous default:
    # {"backend": "reid", "weights": "reid-v2", "image_size": 256, "catalog_views": [0.8]} with rerank_weight 0.5
    # dinov2: {"backend": "dinov2", "weights": "dinov2-vits14", "arch": "vit_small_patch14_dinov2"}
    "reranker": {"backend": "reid-local", "weights": "reid-v2"},
    "search": {"k": 5, "k_recall": 50, "rerank_weight": 0.8},
    # factory "auto": Flat below flat_limit vectors a category, IVF-PQ fast-scan above (indexes/category.py);
    # nprobe and rescore apply to IVF indexes; `shopfluence reindex` retrains past retrain_growth x
    "index": {"factory": "auto", "flat_limit": 50_000, "nprobe": 32, "rescore": 200, "retrain_growth": 2.0,
              "gpu": "auto"},
    "device": "auto",
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | None = None, **overrides) -> dict:
    cfg = DEFAULTS
    if path:
        with open(path, "rb") as f:
            cfg = merge(cfg, tomllib.load(f))
    return merge(cfg, overrides)
