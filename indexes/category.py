"""One FAISS index per garment category, with product ids and stored rerank vectors.

The recall stage searches the FAISS index (built from a factory string: ``Flat`` here, IVF-PQ
when the catalog grows), then candidates are reranked on the stored rerank vectors; every
match keeps both scores so a result can be explained. FAISS's (D, I) arrays stay inside.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np


@dataclass(frozen=True)
class Candidate:
    row: int
    product_id: str
    recall_score: float
    rerank_score: float | None
    score: float


class CategoryIndex:
    """Vectors of one category.

    Args:
        dim: recall embedding size.
        rerank_dim: rerank embedding size, or 0 when there is no rerank stage.
        factory: a ``faiss.index_factory`` string (inner product metric on unit vectors).
    """

    def __init__(self, dim: int, rerank_dim: int = 0, factory: str = "Flat"):
        self.dim, self.rerank_dim, self.factory = dim, rerank_dim, factory
        self.index = faiss.IndexIDMap2(faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT))
        self.product_ids: list[str] = []
        self.rerank = np.zeros((0, rerank_dim), np.float32)

    def __len__(self) -> int:
        return len(self.product_ids)

    def add(self, product_ids: list[str], vectors: np.ndarray, rerank: np.ndarray | None = None) -> None:
        """Add unit-norm float32 vectors (n, dim) and, with a rerank stage, (n, rerank_dim)."""
        vectors = np.ascontiguousarray(vectors, np.float32)
        if vectors.shape != (len(product_ids), self.dim):
            raise ValueError(f"vectors must be ({len(product_ids)}, {self.dim}), got {vectors.shape}")
        if self.rerank_dim:
            if rerank is None or rerank.shape != (len(product_ids), self.rerank_dim):
                raise ValueError(f"rerank vectors must be ({len(product_ids)}, {self.rerank_dim})")
            self.rerank = np.concatenate([self.rerank, np.asarray(rerank, np.float32)])
        rows = np.arange(len(self.product_ids), len(self.product_ids) + len(product_ids), dtype=np.int64)
        self.index.add_with_ids(vectors, rows)
        self.product_ids.extend(product_ids)

    def search(self, query: np.ndarray, k: int, *, rerank_query: np.ndarray | None = None,
               k_recall: int = 50, rerank_weight: float = 0.5) -> list[Candidate]:
        """Top ``k`` products for one query vector (dim,), best first.

        With ``rerank_query`` the ``k_recall`` recalled candidates are re-scored by
        ``score = (1 - w) * recall + w * rerank`` (w = ``rerank_weight``).
        """
        if len(self) == 0:
            return []
        q = np.ascontiguousarray(query, np.float32).reshape(1, self.dim)
        depth = min(len(self), max(k, k_recall if rerank_query is not None else k))
        scores, rows = self.index.search(q, depth)
        found = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
        out = []
        for row, recall in found:
            rerank = None
            score = recall
            if rerank_query is not None and self.rerank_dim:
                rerank = float(self.rerank[row] @ rerank_query)
                score = (1 - rerank_weight) * recall + rerank_weight * rerank
            out.append(Candidate(row, self.product_ids[row], recall, rerank, score))
        out.sort(key=lambda c: -c.score)
        return out[:k]

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "recall.faiss"))
        np.save(folder / "rerank.npy", self.rerank.astype(np.float16))
        (folder / "ids.json").write_text(json.dumps(self.product_ids))
        (folder / "meta.json").write_text(json.dumps(
            {"dim": self.dim, "rerank_dim": self.rerank_dim, "factory": self.factory, "count": len(self)}))

    @classmethod
    def load(cls, folder: Path) -> CategoryIndex:
        meta = json.loads((folder / "meta.json").read_text())
        self = cls.__new__(cls)
        self.dim, self.rerank_dim, self.factory = meta["dim"], meta["rerank_dim"], meta["factory"]
        self.index = faiss.read_index(str(folder / "recall.faiss"))
        self.rerank = np.load(folder / "rerank.npy", mmap_mode="r").astype(np.float32)
        self.product_ids = json.loads((folder / "ids.json").read_text())
        return self
