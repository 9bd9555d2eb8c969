"""Sharded build of one category index: train once, encode shards in parallel, merge.

Every shard is encoded by a copy of the same trained (empty) index, so the merged index equals
a single build: the same codes under the same ids, only the order inside an inverted list may
differ. :func:`add_shard` is a plain function of files, so the batch engine can run it in local
processes (here) or on Ray workers (pipeline/ingest) without change.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from indexes.category import FLAT_LIMIT, CategoryIndex, choose_factory, trained_empty


def add_shard(empty_index: str, vectors_npy: str, start: int, stop: int, out: str, threads: int = 1) -> str:
    """Encode rows ``start:stop`` of a float32 (n, d) ``.npy`` into a copy of the trained empty index.

    FAISS ids are the global row numbers, so shards merge without renumbering. Returns ``out``.
    """
    faiss.omp_set_num_threads(max(1, threads))
    index = faiss.read_index(empty_index)
    vectors = np.load(vectors_npy, mmap_mode="r")
    for i in range(start, stop, 65_536):
        j = min(stop, i + 65_536)
        index.add_with_ids(np.ascontiguousarray(vectors[i:j], np.float32), np.arange(i, j, dtype=np.int64))
    faiss.write_index(index, out)
    return out


def merge_shards(paths: list[str]) -> faiss.Index:
    """One index holding every shard's vectors (``merge_from`` keeps their ids)."""
    merged = faiss.read_index(paths[0])
    for p in paths[1:]:
        merged.merge_from(faiss.read_index(p), 0)
    return merged


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, shards + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def build_sharded(product_ids: list[str], vectors: np.ndarray, rerank: np.ndarray | None = None, *,
                  factory: str = "auto", shards: int = 4, workers: int = 2, flat_limit: int = FLAT_LIMIT,
                  gpu: bool = False, workdir: str | None = None, **params) -> CategoryIndex:
    """:meth:`CategoryIndex.build` with the encoding split into ``shards`` run by ``workers`` processes."""
    n, dim = vectors.shape
    if factory == "auto":
        factory = choose_factory(n, dim, flat_limit)
    out = CategoryIndex(dim, 0 if rerank is None else rerank.shape[1], factory, **params)
    out.check_rows(product_ids, vectors, rerank)  # before the expensive part
    empty, out.trained_on = trained_empty(dim, factory, vectors, gpu=gpu)
    work = Path(tempfile.mkdtemp(prefix="shards-", dir=workdir))
    try:
        faiss.write_index(empty, str(work / "empty.faiss"))
        np.save(work / "vectors.npy", np.ascontiguousarray(vectors, np.float32))
        jobs = [(str(work / "empty.faiss"), str(work / "vectors.npy"), a, b, str(work / f"shard{i}.faiss"),
                 max(1, (os.cpu_count() or 1) // workers)) for i, (a, b) in enumerate(shard_bounds(n, shards))]
        if workers <= 1:
            paths = [add_shard(*j) for j in tqdm(jobs, desc="encode shards", disable=None)]
        else:
            with ProcessPoolExecutor(workers) as pool:
                paths = list(tqdm(pool.map(add_shard, *zip(*jobs)), total=len(jobs), desc="encode shards", disable=None))
        out.index = merge_shards(paths)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out.append_rows(product_ids, vectors, rerank)
    return out
