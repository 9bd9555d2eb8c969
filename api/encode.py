"""Pipeline records -> JSON (only here: the pipeline keeps numpy arrays and dataclasses)."""

from __future__ import annotations

import numpy as np

from pipeline.types import LookResult, Match


def mask_rle(mask: np.ndarray) -> dict:
    """COCO-style uncompressed RLE: run lengths over the column-major pixels, starting with 0s."""
    flat = np.asarray(mask, bool).ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    counts = runs.tolist() if not flat[0] else [0, *runs.tolist()]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    vals = np.zeros(h * w, bool)
    pos, on = 0, False
    for n in rle["counts"]:
        if on:
            vals[pos:pos + n] = True
        pos += n
        on = not on
    return vals.reshape((h, w), order="F")


def match_json(m: Match, product_url) -> dict:
    p = m.product
    return {"product_id": m.product_id, "title": p.get("title"), "url": p.get("url"), "brand": p.get("brand"),
            "price": p.get("price"), "image": product_url(m.product_id) if p.get("image") else None,
            "score": round(m.score, 5), "recall_score": round(m.recall_score, 5),
            "rerank_score": None if m.rerank_score is None else round(m.rerank_score, 5)}


def look_json(r: LookResult, product_url, only: int | None = None) -> dict:
    garments = []
    for i, (g, matches) in enumerate(r.items()):
        if only is not None and i != only:
            continue
        garments.append({
            "index": i, "category": g.category, "label": g.label, "box": [round(float(v), 1) for v in g.box],
            "mask": None if g.mask is None else mask_rle(g.mask),
            "scores": {"detection": round(g.score, 4)},
            "matches": [match_json(m, product_url) for m in matches],
        })
    w, h = r.garments.image_size
    return {
        "image": {"width": int(w), "height": int(h)},
        "pose": {"person": r.pose.person, "full_body": r.pose.full_body, "frontal": r.pose.frontal,
                 "usable": r.pose.usable, "reason": r.pose.reason},
        "garments": garments,
        "timings_ms": r.timings_ms,
        "notes": list(r.notes),
    }
