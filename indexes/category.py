"""One FAISS index per garment category, with product ids, exact vectors and rerank vectors.

Search runs three steps, and every candidate keeps each step's score:

1. recall: the FAISS index (``Flat`` for a small catalog, ``IVF{nlist},PQ{m}x4fs`` above
   ``flat_limit`` vectors) returns ``rescore`` candidates;
2. exact re-score: the candidates' stored full vectors (float16, memory-mapped ``vectors.npy``)
   give their exact cosine similarity, the top ``k_recall`` go on;
3. rerank: their stored rerank rows (``rerank.npy``) give a second similarity
   (:func:`part_similarity`: cosine, or with ``rerank_parts`` > 1 a Chamfer similarity of local
   descriptors), and the final score is ``(1 - w) * recall + w * rerank``.

FAISS ids are row numbers into the stored arrays; ``ids.npy`` maps a row to its product id.
Removing a product takes it out of FAISS at once and leaves a tombstone in the arrays;
:meth:`CategoryIndex.compact` drops tombstones, :meth:`CategoryIndex.retrain` rebuilds the
coarse quantizer (``shopfluence reindex`` runs both when they are due). FAISS's (D, I) arrays
stay inside this module.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

FLAT_LIMIT = 50_000  # below this many vectors an exact scan is fast enough and needs no training
ADD_CHUNK = 65_536


@dataclass(frozen=True)
class Candidate:
    row: int
    product_id: str
    recall_score: float  # exact cosine similarity of the recall embeddings
    rerank_score: float | None  # cosine similarity of the rerank embeddings, None without that stage
    score: float  # what the list is sorted by
    approx_score: float | None = None  # the compressed index's estimate, None for an exact index


def part_similarity(candidates: np.ndarray, query: np.ndarray, parts: int = 1) -> np.ndarray:
    """Rerank similarity of one query row (d,) to candidate rows (f, d), each row ``parts``
    sub-vectors: sum over the query's parts of their best inner product with any part of the
    candidate. With ``parts`` 1 that is the plain inner product (cosine of unit rows); with
    weighted query parts (``reid-local``) a weighted Chamfer similarity, at most 1.
    """
    candidates, query = np.asarray(candidates, np.float32), np.asarray(query, np.float32)
    if parts == 1:
        return candidates @ query
    f, d = candidates.shape
    cells = candidates.reshape(f * parts, d // parts) @ query.reshape(parts, d // parts).T  # (f*parts, parts)
    return cells.reshape(f, parts, parts).max(axis=1).sum(axis=1)


def choose_factory(n: int, dim: int, flat_limit: int = FLAT_LIMIT) -> str:
    """A factory string for ``n`` vectors: Flat below ``flat_limit``, else IVF-PQ fast-scan.

    nlist ~ 4 sqrt(n) (a power of two); one 4-bit sub-quantizer per 2 dimensions, at most 128
    (64 bytes of codes + 8 of id a vector). bench/index_bench.py on 1M 256-d vectors: PQ64
    plateaus at recall@10 0.92 after the exact re-score of 200, PQ128 reaches 0.98 at nprobe 32.
    """
    if n < flat_limit:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    m = max(2, min(dim // 2, 128))
    m -= m % 2  # fast-scan packs sub-quantizers in pairs
    return f"IVF{nlist},PQ{m}x4fs"


def is_exact(factory: str) -> bool:
    return factory.strip() in ("Flat", "IDMap2,Flat")


def new_faiss_index(dim: int, factory: str) -> faiss.Index:
    """An empty index for unit vectors (inner product); Flat gets an id map, IVF has its own ids."""
    if is_exact(factory):
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)


def train_faiss_index(dim: int, factory: str, sample: np.ndarray, *, gpu: bool = False) -> faiss.Index:
    """An empty index of ``factory`` trained on ``sample`` (n, dim) float32.

    With ``gpu`` the k-means of the coarse quantizer runs on all GPUs (faiss's own recipe:
    a GPU flat index as the ``clustering_index``); the trained index itself stays on the CPU.
    """
    index = new_faiss_index(dim, factory)
    if index.is_trained:
        return index
    need = max(_nlist(index), 256)  # k-means of the lists, and of the PQ's 16 (4-bit) or 256 centroids
    if len(sample) < need:
        raise ValueError(f"{len(sample)} vectors are too few to train {factory} (at least {need} needed): "
                         f"use Flat for a catalog this small")
    if gpu and gpu_count():
        ivf = faiss.extract_index_ivf(index)
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    index.train(np.ascontiguousarray(sample, np.float32))
    return index


def trained_empty(dim: int, factory: str, vectors, *, gpu: bool = False) -> tuple[faiss.Index, int]:
    """(an empty index of ``factory`` ready for adds, how many vectors it was trained on: 0 for Flat)."""
    index = new_faiss_index(dim, factory)
    if index.is_trained:
        return index, 0
    return train_faiss_index(dim, factory, training_sample(vectors, _nlist(index)), gpu=gpu), len(vectors)


def training_sample(vectors, nlist: int, seed: int = 0) -> np.ndarray:
    """40 points per list (faiss warns below 39; more costs k-means time, not recall), no repeats."""
    n = len(vectors)
    size = min(n, max(10_000, 40 * nlist))
    rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    return np.asarray(vectors[rows], np.float32)


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def gpu_wanted(cfg: dict) -> bool:
    """The config's ``index.gpu``: "auto" or true use a GPU when faiss sees one."""
    return cfg.get("gpu", "auto") in ("auto", True)


class Rows:
    """An append-only array: a (possibly memory-mapped) base plus rows added since it was loaded."""

    def __init__(self, base: np.ndarray):
        self.base = base
        self.tail: list[np.ndarray] = []
        self._n = len(base)

    def __len__(self) -> int:
        return self._n

    def append(self, a: np.ndarray) -> None:
        self.tail.append(a)
        self._n += len(a)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order (fancy indexing on the memory map reads only those pages)."""
        rows = np.asarray(rows, np.int64)
        nb = len(self.base)
        if not self.tail or rows.max(initial=-1) < nb:
            return self.base[rows]
        if len(self.tail) > 1:
            self.tail = [np.concatenate(self.tail)]
        tail = self.tail[0]
        out = np.empty((len(rows), *self.base.shape[1:]), np.result_type(self.base.dtype, tail.dtype))
        in_base = rows < nb
        out[in_base] = self.base[rows[in_base]]
        out[~in_base] = tail[rows[~in_base] - nb]
        return out

    def tolist(self) -> list:
        out = self.base.tolist()
        for t in self.tail:
            out.extend(t.tolist())
        return out

    def save(self, path: Path, dtype) -> None:
        """Stream to ``path`` in chunks, so a memory-mapped base is never read whole."""
        width = self.base.shape[1:] if self.base.ndim > 1 else ()
        if np.dtype(dtype).kind == "U":
            dtype = np.result_type(self.base.dtype, *(t.dtype for t in self.tail))
        if self._n == 0 or 0 in width:  # numpy cannot memory-map an empty file
            np.save(path, np.zeros((self._n, *width), dtype))
            return
        out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(self._n, *width))
        start = 0
        for part in [self.base, *self.tail]:
            for i in range(0, len(part), ADD_CHUNK):
                chunk = part[i:i + ADD_CHUNK]
                out[start:start + len(chunk)] = chunk
                start += len(chunk)
        out.flush()
        del out


class CategoryIndex:
    """Vectors of one category.

    Args:
        dim: recall embedding size.
        rerank_dim: rerank row length, or 0 when there is no rerank stage.
        rerank_parts: sub-vectors in a rerank row (:func:`part_similarity`), 1 for a plain vector.
        factory: a ``faiss.index_factory`` string for the recall stage (inner product on unit
            vectors); ``Flat`` needs no training, an IVF factory is made by :meth:`build`.
        nprobe: inverted lists visited per query (IVF only).
        rescore: candidates the compressed index returns for the exact re-score (IVF only).
    """

    def __init__(self, dim: int, rerank_dim: int = 0, factory: str = "Flat", *, nprobe: int = 32,
                 rescore: int = 200, rerank_parts: int = 1):
        if rerank_dim % rerank_parts:
            raise ValueError(f"a rerank row of {rerank_dim} values does not split into {rerank_parts} parts")
        self.dim, self.rerank_dim, self.factory = dim, rerank_dim, factory
        self.rerank_parts = rerank_parts
        self.nprobe, self.rescore = nprobe, rescore
        self.index = new_faiss_index(dim, factory)
        self.ids = Rows(np.zeros(0, "<U1"))
        self.vectors = Rows(np.zeros((0, dim), np.float16))
        self.rerank = Rows(np.zeros((0, rerank_dim), np.float16))
        self.dead: set[int] = set()
        self.trained_on = 0
        self._row_of: dict[str, int] | None = None
        self._gpu_index = None

    # ---- size and identity -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids) - len(self.dead)

    @property
    def exact(self) -> bool:
        return is_exact(self.factory)

    def row_of(self) -> dict[str, int]:
        """product id -> row of the live rows (built on first use: a dict of 1M ids is ~0.5 s)."""
        if self._row_of is None:
            dead = self.dead
            self._row_of = {p: r for r, p in enumerate(self.ids.tolist()) if r not in dead}
        return self._row_of

    def __contains__(self, product_id: str) -> bool:
        return product_id in self.row_of()

    def product_ids(self) -> list[str]:
        return list(self.row_of())

    @property
    def _faiss_removes(self) -> bool:
        """Whether removals go into FAISS. Fast-scan IVF keeps its codes packed in blocks, and
        in faiss 1.15 an add after ``remove_ids`` there loses the new vector and resurrects the
        removed ones, so its tombstones are skipped at search time instead (an IDSelector)."""
        try:
            ivf = faiss.downcast_index(faiss.extract_index_ivf(self.index))
            return not isinstance(ivf, faiss.IndexIVFFastScan)
        except RuntimeError:
            return True

    # ---- build, add, remove --------------------------------------------------------------
    @classmethod
    def build(cls, product_ids: list[str], vectors: np.ndarray, rerank: np.ndarray | None = None, *,
              factory: str = "auto", flat_limit: int = FLAT_LIMIT, gpu: bool = False, **params) -> CategoryIndex:
        """Train (when the factory needs it) and fill an index in one go.

        ``factory="auto"`` picks by size (:func:`choose_factory`).
        """
        vectors = np.asarray(vectors)
        dim = vectors.shape[1]
        rerank_dim = 0 if rerank is None else rerank.shape[1]
        if factory == "auto":
            factory = choose_factory(len(vectors), dim, flat_limit)
        self = cls(dim, rerank_dim, factory, **params)
        self.index, self.trained_on = trained_empty(dim, factory, vectors, gpu=gpu)
        self.add(product_ids, vectors, rerank)
        return self

    def add(self, product_ids: list[str], vectors: np.ndarray, rerank: np.ndarray | None = None) -> None:
        """Add unit-norm vectors (n, dim) and, with a rerank stage, (n, rerank_dim).

        A product id already in the index is replaced (its old row becomes a tombstone).
        """
        vectors = self.check_rows(product_ids, vectors, rerank)
        if not self.index.is_trained:
            raise RuntimeError(f"the {self.factory} index is not trained: use CategoryIndex.build or retrain")
        self.remove([p for p in product_ids if p in self.row_of()])
        first = len(self.ids)
        rows = np.arange(first, first + len(product_ids), dtype=np.int64)
        for i in range(0, len(rows), ADD_CHUNK):
            self.index.add_with_ids(np.ascontiguousarray(vectors[i:i + ADD_CHUNK], np.float32), rows[i:i + ADD_CHUNK])
        self.append_rows(product_ids, vectors, rerank)

    def check_rows(self, product_ids: list[str], vectors, rerank) -> np.ndarray:
        """Raise ValueError unless the shapes fit this index and the ids are unique; returns the vectors."""
        n = len(product_ids)
        vectors = np.asarray(vectors)
        if vectors.shape != (n, self.dim):
            raise ValueError(f"vectors must be ({n}, {self.dim}), got {vectors.shape}")
        if self.rerank_dim and (rerank is None or rerank.shape != (n, self.rerank_dim)):
            raise ValueError(f"rerank vectors must be ({n}, {self.rerank_dim})")
        if len(set(product_ids)) != n:
            raise ValueError("duplicate product ids in one add")
        return vectors

    def append_rows(self, product_ids: list[str], vectors: np.ndarray, rerank: np.ndarray | None) -> None:
        """Store the rows whose codes the FAISS index already holds under ids len(self.ids)...

        Used by :meth:`add` and by a sharded build, whose merged index was filled elsewhere.
        """
        first, n = len(self.ids), len(product_ids)
        self.ids.append(np.asarray(product_ids, dtype=str))
        self.vectors.append(np.asarray(vectors).astype(np.float16))
        self.rerank.append(np.zeros((n, 0), np.float16) if not self.rerank_dim else np.asarray(rerank, np.float16))
        self.row_of().update(zip(product_ids, range(first, first + n)))
        self._gpu_index = None

    def remove(self, product_ids: list[str]) -> int:
        """Take products out of search now; their rows stay as tombstones until :meth:`compact`."""
        row_of = self.row_of()
        rows = [row_of.pop(p) for p in product_ids if p in row_of]
        if rows:
            if self._faiss_removes:
                self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(rows, np.int64)))
            self.dead.update(rows)
            self._gpu_index = None
        return len(rows)

    def live_rows(self) -> np.ndarray:
        keep = np.ones(len(self.ids), bool)
        keep[list(self.dead)] = False
        return np.flatnonzero(keep)

    def compact(self) -> int:
        """Drop tombstoned rows and renumber; the trained quantizer is kept. Returns rows dropped."""
        if not self.dead:
            return 0
        dropped = len(self.dead)
        self._refill(self.live_rows(), _empty_clone(self.index))
        return dropped

    def needs_retrain(self, flat_limit: int = FLAT_LIMIT, growth: float = 2.0) -> bool:
        """True when the size calls for another factory, or an IVF index grew ``growth`` x since training."""
        wanted = choose_factory(len(self), self.dim, flat_limit)
        if self.exact != is_exact(wanted):
            return True
        return not self.exact and len(self) > growth * max(self.trained_on, 1)

    def retrain(self, factory: str = "auto", flat_limit: int = FLAT_LIMIT, gpu: bool = False) -> str:
        """Rebuild the recall index from the stored vectors (new quantizer, tombstones dropped)."""
        live = self.live_rows()
        if factory == "auto":
            factory = choose_factory(len(live), self.dim, flat_limit)
        index, self.trained_on = trained_empty(self.dim, factory, _RowView(self.vectors, live), gpu=gpu)
        self.factory = factory
        self._refill(live, index)
        return factory

    def _refill(self, live: np.ndarray, empty: faiss.Index) -> None:
        ids = self.ids.take(live)
        vec = self.vectors.take(live)
        rr = self.rerank.take(live)
        self.index = empty
        for i in tqdm(range(0, len(live), ADD_CHUNK), desc=f"re-add {len(live)} vectors", disable=None):
            chunk = np.asarray(vec[i:i + ADD_CHUNK], np.float32)
            self.index.add_with_ids(chunk, np.arange(i, i + len(chunk), dtype=np.int64))
        self.ids, self.vectors, self.rerank = Rows(ids), Rows(np.asarray(vec)), Rows(np.asarray(rr))
        self.dead, self._row_of, self._gpu_index = set(), None, None

    # ---- search -----------------------------------------------------------------------
    def set_params(self, **params) -> None:
        """Search parameters by name: ``nprobe``, ``rescore``."""
        for name, value in params.items():
            if name not in ("nprobe", "rescore"):
                raise ValueError(f"unknown search parameter {name!r} (nprobe, rescore)")
            setattr(self, name, int(value))

    def use_gpu(self) -> bool:
        """Search on the GPU from now on when faiss-gpu sees one and supports this index type.

        IVF-PQ fast-scan has no GPU implementation; such an index stays on the CPU (False).
        """
        if not gpu_count():
            return False
        try:
            self._gpu_index = faiss.index_cpu_to_all_gpus(self.index)
        except RuntimeError:
            self._gpu_index = None
        return self._gpu_index is not None

    def search(self, query: np.ndarray, k: int, *, rerank_query: np.ndarray | None = None,
               k_recall: int = 50, rerank_weight: float = 0.5, allow: np.ndarray | None = None) -> list[Candidate]:
        """Top ``k`` products for one query vector (dim,), best first (see the module docstring).

        Args:
            rerank_query: the query's rerank vector; without it the list is the exact recall order.
            k_recall: candidates that reach the rerank.
            rerank_weight: w in ``(1 - w) * recall + w * rerank``.
            allow: rows the result may contain (a filter), or None for all.
        """
        return self.search_batch(np.asarray(query).reshape(1, -1), k,
                                 rerank_queries=None if rerank_query is None else np.asarray(rerank_query).reshape(1, -1),
                                 k_recall=k_recall, rerank_weight=rerank_weight, allow=allow)[0]

    def search_batch(self, queries: np.ndarray, k: int, *, rerank_queries: np.ndarray | None = None,
                     k_recall: int = 50, rerank_weight: float = 0.5,
                     allow: np.ndarray | None = None) -> list[list[Candidate]]:
        """:meth:`search` for (n, dim) queries at once (one FAISS call)."""
        if len(self) == 0 or (allow is not None and len(allow) == 0):
            return [[] for _ in range(len(queries))]
        q = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dim)
        reranking = rerank_queries is not None and self.rerank_dim > 0
        depth = max(k, k_recall if reranking else k)
        fetch = depth if self.exact else max(depth, self.rescore)
        fetch = min(fetch, len(self) if allow is None else len(allow))
        approx, rows, scores_exact = self._recall(q, fetch, allow)
        valid = rows >= 0
        safe = np.where(valid, rows, 0)
        if scores_exact:
            exact = np.where(valid, approx, -np.inf)
        else:  # exact cosine on the stored full vectors, then keep the best `depth`
            full = self.vectors.take(safe.ravel()).reshape(*safe.shape, self.dim).astype(np.float32)
            exact = np.where(valid, np.einsum("qfd,qd->qf", full, q), -np.inf)
            keep = np.argsort(-exact, axis=1, kind="stable")[:, :depth]
            safe, approx, exact, valid = (np.take_along_axis(a, keep, 1) for a in (safe, approx, exact, valid))
        score, rr = exact, None
        if reranking:
            rq = np.asarray(rerank_queries, np.float32).reshape(len(q), self.rerank_dim)
            full = self.rerank.take(safe.ravel()).reshape(*safe.shape, self.rerank_dim)
            rr = np.stack([part_similarity(full[i], rq[i], self.rerank_parts) for i in range(len(q))])
            score = np.where(valid, (1 - rerank_weight) * exact + rerank_weight * rr, -np.inf)
        top = np.argsort(-score, axis=1, kind="stable")[:, :k]
        ids = self.ids.take(np.take_along_axis(safe, top, 1).ravel()).reshape(top.shape)
        out = []
        for i in range(len(q)):
            out.append([Candidate(int(safe[i, j]), str(ids[i, n]), float(exact[i, j]),
                                  None if rr is None else float(rr[i, j]), float(score[i, j]),
                                  None if scores_exact else float(approx[i, j]))
                        for n, j in enumerate(top[i]) if valid[i, j]])
        return out

    def _recall(self, q: np.ndarray, fetch: int, allow: np.ndarray | None):
        """(scores, rows, whether the scores are exact) of the first stage.

        A filter is applied inside FAISS (an ``IDSelector``), so the top ``k`` are the best
        allowed products rather than whatever survives a post-filter of the unfiltered top.
        IVF only looks in ``nprobe`` lists, though, so a selective filter (at most
        ``FLAT_LIMIT`` allowed rows) is answered by an exact scan of those rows' stored vectors.
        """
        if allow is not None and len(allow) <= FLAT_LIMIT:
            allow = np.asarray(allow, np.int64)
            s = q @ self.vectors.take(allow).astype(np.float32).T
            top = np.argsort(-s, axis=1, kind="stable")[:, :fetch]
            return np.take_along_axis(s, top, 1), allow[top], True
        if allow is not None:
            sel = faiss.IDSelectorBatch(np.asarray(allow, np.int64))
        elif self.dead and not self._faiss_removes:
            dead = faiss.IDSelectorBatch(np.fromiter(self.dead, np.int64, len(self.dead)))
            sel = faiss.IDSelectorNot(dead)  # `dead` stays referenced until the search returns
        else:
            sel = None
        if self.exact:
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        elif sel is not None:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe, sel=sel)
        else:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        index = self._gpu_index if self._gpu_index is not None and sel is None else self.index
        scores, rows = index.search(q, fetch, params=params)
        return scores, rows, self.exact

    # ---- persistence ----------------------------------------------------------------------
    def meta(self) -> dict:
        return {"dim": self.dim, "rerank_dim": self.rerank_dim, "rerank_parts": self.rerank_parts,
                "factory": self.factory, "count": len(self),
                "rows": len(self.ids), "tombstones": len(self.dead), "trained_on": self.trained_on,
                "nprobe": self.nprobe, "rescore": self.rescore}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "recall.faiss"))
        self.vectors.save(folder / "vectors.npy", np.float16)
        self.rerank.save(folder / "rerank.npy", np.float16)
        self.ids.save(folder / "ids.npy", "U")
        np.save(folder / "tombstones.npy", np.array(sorted(self.dead), np.int64))
        (folder / "meta.json").write_text(json.dumps(self.meta()))

    @classmethod
    def load(cls, folder: Path, *, mmap: bool = True) -> CategoryIndex:
        """Open a saved index; with ``mmap`` the arrays (and what FAISS allows) stay on disk until read."""
        meta = json.loads((folder / "meta.json").read_text())
        self = cls(meta["dim"], meta["rerank_dim"], meta["factory"], nprobe=meta.get("nprobe", 32),
                   rescore=meta.get("rescore", 200), rerank_parts=meta.get("rerank_parts", 1))
        self.trained_on = meta.get("trained_on", 0)
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        self.index = faiss.read_index(str(folder / "recall.faiss"), flags)
        self.vectors = Rows(_load_npy(folder / "vectors.npy", mmap))
        self.rerank = Rows(_load_npy(folder / "rerank.npy", mmap))
        self.ids = Rows(_load_npy(folder / "ids.npy", mmap))
        self.dead = set(np.load(folder / "tombstones.npy").tolist())
        expected = len(self) if self._faiss_removes else len(self.ids)
        if self.index.ntotal != expected:
            raise RuntimeError(f"{folder}: the FAISS index holds {self.index.ntotal} vectors but the "
                               f"rows say {expected}; rebuild it with `shopfluence reindex --force`")
        return self


class _RowView:
    """``vectors[rows]`` of a subset without copying the whole array first."""

    def __init__(self, rows_store: Rows, rows: np.ndarray):
        self.store, self.rows = rows_store, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.store.take(self.rows[i])


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not mmap:
        return np.load(path)
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path)


def _nlist(index: faiss.Index) -> int:
    try:
        return faiss.extract_index_ivf(index).nlist
    except RuntimeError:
        return 1


def _empty_clone(index: faiss.Index) -> faiss.Index:
    empty = faiss.clone_index(index)
    empty.reset()
    return empty
