"""The catalog stages: a product's photos -> its garment, category, tags and vectors.

:func:`products_vectors` is the one code path from photos to index vectors: the batch ingest
(pipeline/ingest.py) calls it a chunk of products at a time, ``POST /v1/products`` and
``shopfluence catalog add`` one product at a time (:func:`product_vectors`).
:func:`index_folder` builds an index from a folder per class (the demo catalog) through the
batch ingest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors.garments import region, whole_photo
from pipeline.dataset import list_photos
from pipeline.images import crop_masked
from pipeline.ingest import IngestOptions, IngestReport, ingest
from pipeline.rows import Row
from pipeline.types import CATEGORIES


def index_folder(folder: str | Path, out: str | Path, config: dict, *, limit_per_class: int = 0,
                 opts: IngestOptions | None = None) -> IngestReport:
    """Index a folder of product photos (``folder/<class>/<id>.jpg``, one product a photo) into a
    new index set at ``out``: the batch ingest (:mod:`pipeline.ingest`) with rows made from the
    folder, the class giving the category (a class that maps to none is rejected)."""
    photos = list_photos(folder)
    if limit_per_class:
        photos = sample_per_class(photos, limit_per_class)
    rows = []
    for n, p in enumerate(photos, 1):
        fields = {"product_id": p.product_id, "images": [str(p.path)], "title": f"{p.label} {p.product_id[:8]}",
                  "label": p.label, "category": p.category}
        if p.category is None:
            rows.append(Row(n, None, f"{p.path}: class '{p.label}' is not an indexed category"))
        else:
            rows.append(Row(n, fields))
    opts = opts or IngestOptions(chunk_size=32)
    return ingest(None, out, config, dataclasses.replace(opts, restart=True, new_index=True), rows=rows)


@dataclass
class ProductVectors:
    """What the catalog stages make of one product's photos."""

    category: str
    label: str
    vector: np.ndarray  # (d,) mean of the photos' unit embeddings, re-normalised
    rerank: np.ndarray | None  # the reranker's row (Embedder.merge_photos of the photos' rows)
    tags: list[dict]  # per photo with a garment: photo (its index), category, label, box (xyxy pixels), score


def product_vectors(models: dict, images: list[np.ndarray], category: str | None = None) -> ProductVectors:
    """The catalog stages for one product (the on-demand path): see :func:`products_vectors`.

    Raises:
        ValueError: no garment of ``category`` is found in any photo.
    """
    out = products_vectors(models, [images], [category])[0]
    if isinstance(out, Exception):
        raise out
    return out


def find_garment(models: dict, image: np.ndarray, category: str | None = None) -> tuple[np.ndarray, dict] | None:
    """The garment a product photo shows: the worn garment of ``category`` (or the largest one)
    when a person is in it, else the whole photo; returns its masked crop and its tag
    (category, label, box xyxy pixels, score), or None when the photo has no such garment.
    When ``category`` is given but not detected on the person, the region of all the person's
    garments stands for it (the tag says ``fallback``).
    """
    verdict = models["pose"].check(image)
    fallback = False
    if verdict.person:
        found = models["detector"].detect(image, verdict)
        garments = found if category is None else found[np.asarray(found.categories) == category]
        if len(garments):
            areas = (garments.boxes[:, 2] - garments.boxes[:, 0]) * (garments.boxes[:, 3] - garments.boxes[:, 1])
            garments = garments[[int(np.argmax(areas))]]
        elif category is not None and len(found):
            # the retailer says what the product is (a dress seen as top + skirt, say): take the
            # region of everything the person wears rather than lose the product
            box = np.concatenate([found.boxes[:, :2].min(0), found.boxes[:, 2:].max(0)])
            garments, fallback = region(image, box, models["classifier"], category), True
        else:
            return None
        garments = models["masker"].mask(image, garments, verdict)
    else:
        garments = whole_photo(image, models["classifier"])
        if category is not None:
            garments = dataclasses.replace(garments, categories=[category])
    g = garments[0]
    crop = crop_masked(image, g.box, g.mask, models["embedder"].preprocess.fill)
    tag = {"category": g.category, "label": g.label, "box": [round(float(v), 1) for v in g.box],
           "score": round(float(g.score), 4)}
    return crop, tag | ({"fallback": f"no {category} detected: the person's garments"} if fallback else {})


def products_vectors(models: dict, products: list[list[np.ndarray]],
                     categories: list[str | None]) -> list[ProductVectors | ValueError]:
    """The catalog stages for several products: per photo :func:`find_garment`; then every crop
    of every product goes through the embedders in one batched call (the GPU sees full batches,
    not one product's few photos), with the embedder's catalog views; a product's photos of its
    category (given, or the one most of its photos show) are averaged into one vector.

    Returns, per product, its :class:`ProductVectors` or the ValueError saying why it has none.
    """
    crops, owner, tags, problems = [], [], [[] for _ in products], [[] for _ in products]
    for p, (images, category) in enumerate(zip(products, categories)):
        if category is not None and category not in CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(CATEGORIES)}, got {category!r}")
        for j, image in enumerate(images):
            try:
                found = find_garment(models, image, category)
            except Exception as e:  # noqa: BLE001 (one odd photo is reported with its product, never fatal)
                problems[p].append(f"photo {j + 1}: {type(e).__name__}: {e}")
                continue
            if found is not None:
                crops.append(found[0])
                owner.append(p)
                tags[p].append({"photo": j, **found[1]})
    vectors = models["embedder"].embed_catalog(crops) if crops else None
    rerank = models["reranker"].embed_catalog(crops) if crops and models["reranker"] is not None else None
    owner = np.asarray(owner, np.int64)
    out: list[ProductVectors | ValueError] = []
    for p, (images, category) in enumerate(zip(products, categories)):
        if not tags[p]:
            why = f" ({'; '.join(problems[p])})" if problems[p] else ""
            out.append(ValueError(f"no {category or 'garment'} found in the {len(images)} photo(s){why}"))
            continue
        cats = [t["category"] for t in tags[p]]
        chosen = category or max(dict.fromkeys(cats), key=cats.count)  # ties: the first photo's
        keep = np.flatnonzero(owner == p)[[i for i, c in enumerate(cats) if c == chosen]]
        label = tags[p][cats.index(chosen)]["label"]
        out.append(ProductVectors(chosen, label, models["embedder"].merge_photos(vectors[keep]),
                                  None if rerank is None else models["reranker"].merge_photos(rerank[keep]), tags[p]))
    return out


def sample_per_class(photos, n: int):
    """At most ``n`` photos of each class, in path order."""
    out, seen = [], {}
    for p in photos:
        if seen.get(p.label, 0) < n:
            out.append(p)
            seen[p.label] = seen.get(p.label, 0) + 1
    return out

