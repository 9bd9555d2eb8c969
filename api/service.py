"""The pipeline behind the API, one per worker process: loads in the background, serves looks,
and applies catalog writes so that every worker sees them.

Writes (add/delete a product) take an exclusive file lock beside the index, reload the index
if another worker saved since, apply the change, and save atomically; readers notice the new
manifest on their next request and swap in the new index (a memory-mapped load, ~0.1 s at 1M
vectors). Model inference is serialised inside a worker (MediaPipe and torch modules are not
meant to be called from several threads at once); gunicorn's threads overlap I/O with it.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from PIL import Image

from indexes.index_set import IndexSet, write_lock
from pipeline.catalog import product_vectors
from pipeline.look import ShopTheLook, apply_index_config, build_models, model_signature


class NotReady(RuntimeError):
    """Models or index are still loading, or failed to load (the message says which)."""


class Service:
    """Owns the models and the index of one worker. ``state``: loading, ready or failed."""

    def __init__(self, cfg: dict, *, background: bool = True):
        self.cfg = cfg
        api = cfg["api"]
        self.index_dir = Path(api["index"])
        self.image_dir = Path(api.get("image_dir") or f"{self.index_dir}-images")
        self.state, self.error, self.shop = "loading", None, None
        self._mtime = None
        self._infer = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="look")
        self.loaded_in_s = None
        if background:
            threading.Thread(target=self._load, daemon=True, name="load-models").start()
        else:
            self._load()

    # ---- loading --------------------------------------------------------------------
    def _load(self) -> None:
        t = time.perf_counter()
        try:
            models = build_models(self.cfg)
            signature = model_signature(models["embedder"], models["reranker"])
            if not (self.index_dir / "manifest.json").is_file() and self.cfg["api"].get("create_index"):
                IndexSet(signature).save(self.index_dir)
            index = IndexSet.load(self.index_dir, signature)
            apply_index_config(index, self.cfg["index"])
            self._mtime = self._manifest_mtime()
            self.shop = ShopTheLook(models, index, self.cfg["search"])
            self.signature = signature
            self.state, self.loaded_in_s = "ready", round(time.perf_counter() - t, 2)
        except Exception as e:  # noqa: BLE001 (any failure is reported by /readyz, not raised in a thread)
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            traceback.print_exc()

    def ready(self) -> ShopTheLook:
        if self.state != "ready":
            raise NotReady(self.error or "models and index are loading")
        self.refresh()
        return self.shop

    def _manifest_mtime(self):
        try:
            return (self.index_dir / "manifest.json").stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def refresh(self) -> None:
        """Swap in the index another worker saved since we loaded ours."""
        mtime = self._manifest_mtime()
        if mtime is not None and mtime != self._mtime:
            index = IndexSet.load(self.index_dir, self.signature)
            apply_index_config(index, self.cfg["index"])
            self.shop.index, self._mtime = index, mtime

    # ---- reading --------------------------------------------------------------------
    def run(self, fn, *args, **kw):
        """Run inference under the worker's model lock, giving up after the request timeout."""
        def locked():
            with self._infer:
                return fn(*args, **kw)

        future = self._pool.submit(locked)
        return future.result(timeout=self.cfg["api"]["request_timeout_s"])

    # ---- writing --------------------------------------------------------------------
    def _write(self, change):
        shop = self.ready()
        with write_lock(self.index_dir):
            self.refresh()
            result = change(shop.index)
            shop.index.save(self.index_dir)
            self._mtime = self._manifest_mtime()
            return result

    def add_product(self, product: dict, images: list[np.ndarray], category: str | None = None) -> dict:
        """Detect, embed and index one product (the on-demand path); returns its stored record."""
        shop = self.ready()
        with self._infer:
            pv = product_vectors(shop.models, images, category)
        paths = self._store_images(product["product_id"], images)
        record = {**product, "category": pv.category, "label": product.get("label") or pv.label,
                  "image": paths[0], "images": paths}

        def change(index: IndexSet):
            index.add(pv.category, [record], pv.vector[None], None if pv.rerank is None else pv.rerank[None])

        self._write(change)
        return {**record, "tags": pv.tags}

    def delete_product(self, product_id: str) -> bool:
        return bool(self._write(lambda index: index.remove([product_id])))

    def _store_images(self, product_id: str, images: list[np.ndarray]) -> list[str]:
        """Re-encode from pixels: nothing of the upload's metadata (EXIF, GPS, ICC) is kept."""
        self.image_dir.mkdir(parents=True, exist_ok=True)
        stem = hashlib.sha256(product_id.encode()).hexdigest()[:24]
        paths = []
        for i, image in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "JPEG", quality=90)
            path = self.image_dir / f"{stem}-{i}.jpg"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)
            paths.append(str(path))
        return paths

