"""The four category indexes plus the product store, saved to one directory with a manifest.

Loading an index built with other model weights is refused: vectors from two models are not
comparable, and silently mixing them returns nonsense.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from indexes.category import FLAT_LIMIT, Candidate, CategoryIndex, choose_factory
from indexes.shards import build_sharded
from pipeline.types import CATEGORIES

FORMAT = 2


class IndexMismatch(RuntimeError):
    """The index on disk was built with other models or weights than the pipeline's."""


class ProductStore:
    """Product metadata in SQLite (one file beside the indexes); safe to share between threads."""

    COLUMNS = ("product_id", "title", "url", "brand", "price", "category", "label", "image", "images", "added")

    def __init__(self, path: Path | str):
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(str(path), check_same_thread=False)
        with self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS products (product_id TEXT PRIMARY KEY, title TEXT, url TEXT, "
                "brand TEXT, price REAL, category TEXT, label TEXT, image TEXT, images TEXT, added REAL)")
            self.db.execute("CREATE INDEX IF NOT EXISTS by_brand ON products (category, brand)")
            self.db.execute("CREATE INDEX IF NOT EXISTS by_price ON products (category, price)")

    def put(self, rows: list[dict]) -> None:
        """Insert or replace products; ``images`` (a list of paths) is stored as JSON."""
        cols = self.COLUMNS
        now = time.time()

        def value(r, c):
            v = r.get(c)
            if c == "added":
                return now if v is None else v
            return json.dumps(v) if c == "images" and v is not None else v

        with self.lock, self.db:
            self.db.executemany(
                f"INSERT OR REPLACE INTO products ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [tuple(value(r, c) for c in cols) for r in rows])

    def get(self, product_ids: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for i in range(0, len(product_ids), 500):  # SQLite caps the number of parameters
            part = list(product_ids[i:i + 500])
            q = f"SELECT * FROM products WHERE product_id IN ({', '.join('?' * len(part))})"
            with self.lock:
                cur = self.db.execute(q, part)
                names = [d[0] for d in cur.description]
                rows = cur.fetchall()
            for row in rows:
                d = dict(zip(names, row))
                d["images"] = json.loads(d["images"]) if d.get("images") else []
                out[row[0]] = d
        return out

    def delete(self, product_ids: list[str]) -> None:
        with self.lock, self.db:
            self.db.executemany("DELETE FROM products WHERE product_id = ?", [(p,) for p in product_ids])

    def matching(self, category: str, *, brand: str | list[str] | None = None, price_min: float | None = None,
                 price_max: float | None = None) -> list[str]:
        """Product ids of ``category`` that pass the filters (brand is exact, case-insensitive)."""
        where, args = ["category = ?"], [category]
        if brand:
            brands = [brand] if isinstance(brand, str) else list(brand)
            where.append(f"lower(brand) IN ({', '.join('?' * len(brands))})")
            args += [b.lower() for b in brands]
        if price_min is not None:
            where.append("price >= ?")
            args.append(float(price_min))
        if price_max is not None:
            where.append("price <= ?")
            args.append(float(price_max))
        with self.lock:
            return [r[0] for r in self.db.execute(f"SELECT product_id FROM products WHERE {' AND '.join(where)}", args)]

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM products").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class IndexSet:
    """``upper``, ``lower``, ``footwear`` and ``dress`` indexes built with one pair of models.

    ``models`` records, for the recall and rerank embedders, their backend name, dim and the
    sha256 of their weights; ``load`` compares it with the pipeline's and refuses a mismatch.

    Args:
        factory: ``auto`` (Flat below ``flat_limit`` vectors, IVF-PQ above) or a faiss factory
            string used for every category built with :meth:`build_category`.
        nprobe, rescore: search parameters of IVF indexes (see :class:`CategoryIndex`).
    """

    def __init__(self, models: dict, folder: Path | None = None, *, factory: str = "auto",
                 flat_limit: int = FLAT_LIMIT, nprobe: int = 32, rescore: int = 200):
        self.models = models
        self.factory, self.flat_limit = factory, flat_limit
        rerank_dim, parts = models.get("rerank", {}).get("dim", 0), models.get("rerank", {}).get("parts", 1)
        self.indexes = {c: CategoryIndex(models["recall"]["dim"], rerank_dim, "Flat", nprobe=nprobe, rescore=rescore,
                                         rerank_parts=parts) for c in CATEGORIES}
        self.folder = folder
        self.store = ProductStore(":memory:" if folder is None else folder / "products.sqlite")
        self.lock = threading.RLock()  # writers (add/remove/save) against each other and searches

    def __getitem__(self, category: str) -> CategoryIndex:
        return self.indexes[category]

    def counts(self) -> dict[str, int]:
        return {c: len(i) for c, i in self.indexes.items()}

    # ---- writing ----------------------------------------------------------------------
    def build_category(self, category: str, product_ids: list[str], vectors: np.ndarray,
                       rerank: np.ndarray | None = None, *, gpu: bool = False) -> None:
        """Replace one category with a freshly trained index of these vectors."""
        old = self.indexes[category]
        self.indexes[category] = CategoryIndex.build(
            product_ids, vectors, rerank, factory=self.factory, flat_limit=self.flat_limit, gpu=gpu,
            nprobe=old.nprobe, rescore=old.rescore, rerank_parts=old.rerank_parts)

    def add(self, category: str, products: list[dict], vectors: np.ndarray, rerank: np.ndarray | None = None) -> None:
        """Add products (store rows with at least ``product_id``) to one category, no rebuild.

        A product id already present anywhere is replaced, even under another category.
        """
        ids = [p["product_id"] for p in products]
        with self.lock:
            for c, index in self.indexes.items():
                if c != category:
                    index.remove(ids)
            self.indexes[category].add(ids, vectors, rerank)
            self.store.put([{**p, "category": category} for p in products])

    def bulk_add(self, category: str, products: list[dict], vectors: np.ndarray, rerank: np.ndarray | None = None,
                 *, gpu: bool = False, workers: int = 1) -> None:
        """Add many products at once: an empty category is built, trained for its final size (and
        encoded in ``workers`` parallel shards when that is IVF-PQ); a filled one grows by :meth:`add`
        (then :meth:`maintain` retrains it when it is due).
        """
        if len(self.indexes[category]):
            self.add(category, products, vectors, rerank)
            return
        ids = [p["product_id"] for p in products]
        with self.lock:
            for c, index in self.indexes.items():
                if c != category:
                    index.remove(ids)
            old = self.indexes[category]
            factory = choose_factory(len(ids), vectors.shape[1], self.flat_limit) if self.factory == "auto" else self.factory
            if workers > 1 and factory != "Flat":
                self.indexes[category] = build_sharded(
                    ids, vectors, rerank, factory=factory, shards=2 * workers, workers=workers,
                    flat_limit=self.flat_limit, gpu=gpu, nprobe=old.nprobe, rescore=old.rescore,
                    rerank_parts=old.rerank_parts)
            else:
                self.build_category(category, ids, vectors, rerank, gpu=gpu)
            self.store.put([{**p, "category": category} for p in products])

    def remove(self, product_ids: list[str]) -> int:
        """Take products out of the indexes and the store; returns how many were indexed."""
        with self.lock:
            n = sum(index.remove(product_ids) for index in self.indexes.values())
            self.store.delete(product_ids)
        return n

    def maintain(self, *, force: bool = False, growth: float = 2.0, factory: str | None = None,
                 gpu: bool = False) -> dict[str, str]:
        """Compact tombstones and retrain quantizers that are due (or all, with ``force``).

        Returns what was done per category.
        """
        done = {}
        with self.lock:
            for c, index in self.indexes.items():
                if force or index.needs_retrain(self.flat_limit, growth):
                    f = index.retrain(factory or self.factory, self.flat_limit, gpu=gpu)
                    done[c] = f"retrained as {f} on {len(index)} vectors"
                elif index.dead:
                    done[c] = f"compacted {index.compact()} tombstones"
                else:
                    done[c] = f"kept {index.factory} ({len(index)} vectors)"
        return done

    # ---- searching --------------------------------------------------------------------
    def allowed_rows(self, category: str, filters: dict | None) -> np.ndarray | None:
        """Rows of ``category`` that pass ``filters`` ({brand, price_min, price_max}); None = all."""
        filters = {k: v for k, v in (filters or {}).items() if v not in (None, "", [])}
        if not filters:
            return None
        unknown = set(filters) - {"brand", "price_min", "price_max"}
        if unknown:
            raise ValueError(f"unknown filter(s) {sorted(unknown)}: use brand, price_min, price_max")
        row_of = self.indexes[category].row_of()
        ids = self.store.matching(category, **filters)
        return np.array([row_of[p] for p in ids if p in row_of], np.int64)

    def search(self, category: str, query: np.ndarray, k: int, *, rerank_query: np.ndarray | None = None,
               k_recall: int = 50, rerank_weight: float = 0.5, filters: dict | None = None) -> list[Candidate]:
        with self.lock:
            return self.indexes[category].search(query, k, rerank_query=rerank_query, k_recall=k_recall,
                                                 rerank_weight=rerank_weight, allow=self.allowed_rows(category, filters))

    # ---- persistence ------------------------------------------------------------------
    def manifest(self) -> dict:
        return {"format": FORMAT, "models": self.models, "counts": self.counts(),
                "indexes": {c: i.meta() for c, i in self.indexes.items()},
                "factory": self.factory, "flat_limit": self.flat_limit,
                "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def save(self, folder: Path | str) -> None:
        """Write to a temporary sibling, fsync, then rename: a crash leaves the old index intact."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with self.lock:
            for c, index in self.indexes.items():
                index.save(tmp / c)
            dst = ProductStore(tmp / "products.sqlite")
            with self.store.lock, dst.db:
                self.store.db.backup(dst.db)
            dst.close()
            (tmp / "manifest.json").write_text(json.dumps(self.manifest(), indent=2))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)  # the manifest's presence marks a complete index
        _fsync_dir(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
        with self.lock:  # later writes go to the saved folder's store, not the deleted old one
            self.store.close()
            self.store, self.folder = ProductStore(folder / "products.sqlite"), folder

    @classmethod
    def load(cls, folder: Path | str, expect_models: dict | None = None, *, mmap: bool = True) -> IndexSet:
        """Open a saved set; ``mmap`` leaves vectors on disk until a search reads them."""
        folder = Path(folder)
        _recover(folder)
        mpath = folder / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"no index at {folder}: build one with `shopfluence index CATALOG_FOLDER --out {folder}`")
        manifest = json.loads(mpath.read_text())
        if manifest.get("format", 1) != FORMAT:
            raise IndexMismatch(f"the index at {folder} has format {manifest.get('format', 1)}, this version reads "
                                f"{FORMAT}: rebuild it with `shopfluence index ... --out {folder}`")
        if expect_models is not None and manifest["models"] != expect_models:
            raise IndexMismatch(
                f"the index at {folder} was built with {manifest['models']} but the pipeline uses "
                f"{expect_models}: rebuild it with `shopfluence index ... --out {folder}`")
        self = cls.__new__(cls)
        self.models, self.folder = manifest["models"], folder
        self.factory, self.flat_limit = manifest.get("factory", "auto"), manifest.get("flat_limit", FLAT_LIMIT)
        self.indexes = {c: CategoryIndex.load(folder / c, mmap=mmap) for c in CATEGORIES}
        self.store = ProductStore(folder / "products.sqlite")
        self.lock = threading.RLock()
        return self


@contextlib.contextmanager
def write_lock(folder: Path | str):
    """The exclusive lock every writer of the index at ``folder`` holds (``<folder>.lock``):
    the API's workers, ``catalog add`` and the batch ingest."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _recover(folder: Path) -> None:
    """A save killed between its two renames leaves only ``<name>.old``: put it back."""
    old = folder.with_name(folder.name + ".old")
    if not (folder / "manifest.json").is_file() and (old / "manifest.json").is_file():
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(old, folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
