"""The four category indexes plus the product store, saved to one directory with a manifest.

Loading an index built with other model weights is refused: vectors from two models are not
comparable, and silently mixing them returns nonsense.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

from indexes.category import CategoryIndex
from pipeline.types import CATEGORIES


class IndexMismatch(RuntimeError):
    """The index on disk was built with other models or weights than the pipeline's."""


class ProductStore:
    """Product metadata in SQLite (one file beside the indexes)."""

    COLUMNS = ("product_id", "title", "url", "brand", "price", "category", "label", "image", "added")

    def __init__(self, path: Path):
        self.path = Path(path)
        self.db = sqlite3.connect(self.path, check_same_thread=False)
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS products (product_id TEXT PRIMARY KEY, title TEXT, url TEXT, "
            "brand TEXT, price REAL, category TEXT, label TEXT, image TEXT, added REAL)")

    def put(self, rows: list[dict]) -> None:
        cols = self.COLUMNS
        with self.db:
            self.db.executemany(
                f"INSERT OR REPLACE INTO products ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [tuple(r.get(c, time.time() if c == "added" else None) for c in cols) for r in rows])

    def get(self, product_ids: list[str]) -> dict[str, dict]:
        if not product_ids:
            return {}
        q = f"SELECT * FROM products WHERE product_id IN ({', '.join('?' * len(product_ids))})"
        cur = self.db.execute(q, product_ids)
        names = [d[0] for d in cur.description]
        return {row[0]: dict(zip(names, row)) for row in cur.fetchall()}

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM products").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class IndexSet:
    """``upper``, ``lower``, ``footwear`` and ``dress`` indexes built with one pair of models.

    ``models`` records, for the recall and rerank embedders, their backend name, dim and the
    sha256 of their weights; ``load`` compares it with the pipeline's and refuses a mismatch.
    """

    def __init__(self, models: dict, folder: Path | None = None, factory: str = "Flat"):
        self.models = models
        rerank_dim = models.get("rerank", {}).get("dim", 0)
        self.indexes = {c: CategoryIndex(models["recall"]["dim"], rerank_dim, factory) for c in CATEGORIES}
        self.folder = folder
        self.store = ProductStore(":memory:" if folder is None else folder / "products.sqlite")

    def __getitem__(self, category: str) -> CategoryIndex:
        return self.indexes[category]

    def counts(self) -> dict[str, int]:
        return {c: len(i) for c, i in self.indexes.items()}

    def save(self, folder: Path) -> None:
        """Write to a temporary sibling, then rename: a crash leaves the old index intact."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for c, index in self.indexes.items():
            index.save(tmp / c)
        dst = ProductStore(tmp / "products.sqlite")
        with dst.db:
            self.store.db.backup(dst.db)
        dst.close()
        manifest = {"models": self.models, "counts": self.counts(), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path, expect_models: dict | None = None) -> IndexSet:
        folder = Path(folder)
        mpath = folder / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"no index at {folder}: build one with `shopfluence index CATALOG_FOLDER --out {folder}`")
        manifest = json.loads(mpath.read_text())
        if expect_models is not None and manifest["models"] != expect_models:
            raise IndexMismatch(
                f"the index at {folder} was built with {manifest['models']} but the pipeline uses "
                f"{expect_models}: rebuild it with `shopfluence index ... --out {folder}`")
        self = cls.__new__(cls)
        self.models, self.folder = manifest["models"], folder
        self.indexes = {c: CategoryIndex.load(folder / c) for c in CATEGORIES}
        self.store = ProductStore(folder / "products.sqlite")
        return self
