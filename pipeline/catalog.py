"""The catalog side: photos of products -> category, embeddings -> the index set.

This issue's scope is a folder of product photos (one sub-folder per class, like
clothing-dataset-small); each photo is one product. A photo that cannot be read is reported
and skipped, never fatal.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detectors.garments import whole_photo
from indexes.category import gpu_wanted
from indexes.index_set import IndexSet
from pipeline.dataset import list_photos
from pipeline.images import ImageError, crop_masked, load_image
from pipeline.look import build_models, model_signature
from pipeline.types import CATEGORIES


@dataclass
class IndexReport:
    added: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def index_folder(folder: str | Path, out: str | Path, config: dict, *, batch: int = 32,
                 limit_per_class: int = 0) -> IndexReport:
    """Embed every photo under ``folder/<class>/`` and save an IndexSet at ``out``."""
    models = build_models(config)
    embedder, reranker, classifier = models["embedder"], models["reranker"], models["classifier"]
    icfg = config["index"]
    index = IndexSet(model_signature(embedder, reranker), factory=icfg["factory"], flat_limit=icfg["flat_limit"],
                     nprobe=icfg["nprobe"], rescore=icfg["rescore"])
    parts: dict[str, list] = {c: [] for c in CATEGORIES}  # (ids, vectors, rerank) batches per category
    photos = list_photos(folder)
    if limit_per_class:
        photos = sample_per_class(photos, limit_per_class)
    report = IndexReport(dict.fromkeys(CATEGORIES, 0))
    for start in tqdm(range(0, len(photos), batch), desc="index catalog", unit="batch", disable=None):
        rows, crops = [], []
        for p in photos[start:start + batch]:
            try:
                image = load_image(p.path, max_side=512)
            except ImageError as e:
                report.skipped.append((str(p.path), str(e)))
                continue
            category, label = p.category, p.label
            if category is None and p.label not in ("hat",) and classifier is not None:
                g = whole_photo(image, classifier)
                category, label = str(g.categories[0]), str(g.labels[0])
            if category not in CATEGORIES:
                report.skipped.append((str(p.path), f"class '{p.label}' is not an indexed category"))
                continue
            rows.append({"product_id": p.product_id, "title": f"{label} {p.product_id[:8]}", "category": category,
                         "label": label, "image": str(p.path)})
            crops.append(image)
        if not rows:
            continue
        vectors = embedder.embed(crops)
        rerank = reranker.embed(crops) if reranker is not None else None
        for cat in CATEGORIES:
            sel = [i for i, r in enumerate(rows) if r["category"] == cat]
            if sel:
                parts[cat].append(([rows[i]["product_id"] for i in sel], vectors[sel],
                                   None if rerank is None else rerank[sel]))
                report.added[cat] += len(sel)
        index.store.put(rows)
    gpu = gpu_wanted(icfg)
    for cat, batches in parts.items():
        if batches:  # one build per category, so the factory fits the final size
            index.build_category(cat, [p for b in batches for p in b[0]], np.concatenate([b[1] for b in batches]),
                                 None if reranker is None else np.concatenate([b[2] for b in batches]), gpu=gpu)
    index.save(Path(out))
    for path, reason in report.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return report


@dataclass
class ProductVectors:
    """What the catalog stages make of one product's photos."""

    category: str
    label: str
    vector: np.ndarray  # (d,) mean of the photos' unit embeddings, re-normalised
    rerank: np.ndarray | None
    tags: list[dict]  # per photo: category, label, box (xyxy pixels), score


def product_vectors(models: dict, images: list[np.ndarray], category: str | None = None) -> ProductVectors:
    """The catalog stages for one product: per photo, find the garment (the person's garment of
    ``category``, or the largest one; the whole photo when nobody wears it), mask, crop and
    embed; several photos are averaged into one vector.

    Raises:
        ValueError: no garment of ``category`` is found in any photo.
    """
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
    crops, tags = [], []
    for image in images:
        verdict = models["pose"].check(image)
        if verdict.person:
            garments = models["detector"].detect(image, verdict)
            if category is not None:
                garments = garments[np.asarray(garments.categories) == category]
            if not len(garments):
                continue
            areas = (garments.boxes[:, 2] - garments.boxes[:, 0]) * (garments.boxes[:, 3] - garments.boxes[:, 1])
            garments = models["masker"].mask(image, garments[[int(np.argmax(areas))]], verdict)
        else:
            garments = whole_photo(image, models["classifier"])
            if category is not None:
                garments = dataclasses.replace(garments, categories=[category])
        g = garments[0]
        crops.append(crop_masked(image, g.box, g.mask, models["embedder"].preprocess.fill))
        tags.append({"category": g.category, "label": g.label, "box": [round(float(v), 1) for v in g.box],
                     "score": round(float(g.score), 4)})
    if not crops:
        raise ValueError(f"no {category or 'garment'} found in the {len(images)} photo(s)")
    cats = [t["category"] for t in tags]
    chosen = category or max(set(cats), key=cats.count)
    keep = [i for i, c in enumerate(cats) if c == chosen]
    vector = _mean_unit(models["embedder"].embed([crops[i] for i in keep]))
    rerank = None if models["reranker"] is None else _mean_unit(models["reranker"].embed([crops[i] for i in keep]))
    return ProductVectors(chosen, tags[keep[0]]["label"], vector, rerank, tags)


def _mean_unit(vectors: np.ndarray) -> np.ndarray:
    v = vectors.mean(axis=0)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def sample_per_class(photos, n: int):
    """At most ``n`` photos of each class, in path order."""
    out, seen = [], {}
    for p in photos:
        if seen.get(p.label, 0) < n:
            out.append(p)
            seen[p.label] = seen.get(p.label, 0) + 1
    return out

