"""Retrieval metrics over ranked lists (rows: queries, columns: gallery indices, best first)."""

from __future__ import annotations

import numpy as np


def recall_at_k(ranks: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Share of queries whose true gallery item is among the first ``k`` (one true item each)."""
    if len(ranks) == 0:
        return float("nan")
    return float((ranks[:, :k] == np.asarray(truth)[:, None]).any(axis=1).mean())


def average_precision_at_k(ranked: np.ndarray, relevant: set, k: int) -> float:
    """AP@k of one ranked list: mean of precision@i over the ranks i <= k that hold a relevant
    item, divided by min(k, number of relevant items)."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            hits += 1
            total += hits / i
    return total / min(k, len(relevant))


def map_at_k(ranks: np.ndarray, truth: np.ndarray, k: int) -> float:
    """mAP@k with one relevant item per query (each query is a re-photograph of one product)."""
    return float(np.mean([average_precision_at_k(r, {t}, k) for r, t in zip(ranks, truth)]))


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
