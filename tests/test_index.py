"""Real FAISS indexes on real embeddings (our model on ../shared/data catalog photos).

Approximate indexes are compared with ``IndexFlatIP`` ground truth on the same vectors.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexes.category import CategoryIndex, choose_factory
from indexes.index_set import IndexMismatch, IndexSet
from indexes.shards import build_sharded
from indexes.synthetic import grow_embeddings

from .conftest import CATALOG

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"recall": {"backend": "reid", "dim": 256, "weights_sha256": "abc", "image_size": 112},
          "rerank": {"backend": "reid", "dim": 256, "weights_sha256": "abc", "image_size": 144}}


@pytest.fixture(scope="module")
def real(reid_weights):
    """Embeddings of 160 real catalog photos (40 per category folder mix), unit float32 (160, 256)."""
    from detectors.embedders import build_embedder
    from pipeline.dataset import list_photos
    from pipeline.images import load_image

    emb = build_embedder("reid", checkpoint=reid_weights, device="cpu")
    photos = list_photos(CATALOG / "validation")[::2][:160]
    return emb.embed([load_image(p.path, max_side=256) for p in photos])


@pytest.fixture(scope="module")
def big(real):
    """20k catalog-like vectors grown from the real ones, and 200 queries."""
    return grow_embeddings(real, 20_000, seed=0), grow_embeddings(real, 200, seed=1)


def _truth(base, queries, k=10):
    return np.argsort(-(queries @ base.T), axis=1)[:, :k]


def _rows(results):
    return [[c.row for c in r] for r in results]


def _recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


def test_flat_index_is_exact(real):
    idx = CategoryIndex.build([f"p{i}" for i in range(len(real))], real, factory="auto")
    assert idx.factory == "Flat"
    q = real[3]
    top = idx.search(q, 10)
    truth = np.argsort(-(real @ q))[:10]
    assert [c.product_id for c in top] == [f"p{i}" for i in truth]
    assert top[0].product_id == "p3" and top[0].approx_score is None
    assert np.allclose([c.recall_score for c in top], (real @ q)[truth], atol=1e-5)


def test_ivfpq_with_exact_rescore_matches_flat(big):
    base, queries = big
    idx = CategoryIndex.build([f"p{i}" for i in range(len(base))], base, factory="IVF256,PQ64x4fs",
                              nprobe=32, rescore=200)
    truth = _truth(base, queries)
    final = _recall(_rows(idx.search_batch(queries, 10)), truth)
    idx.set_params(rescore=10)
    raw = _recall(_rows(idx.search_batch(queries, 10)), truth)
    assert final >= 0.95, final
    assert final > raw  # the exact re-score is what brings it there
    c = idx.search(queries[0], 1)[0]
    assert c.approx_score is not None and abs(c.recall_score - float(base[c.row] @ queries[0])) < 2e-3


def test_factory_is_chosen_by_size():
    assert choose_factory(10_000, 256) == "Flat"
    assert choose_factory(1_000_000, 256) == "IVF4096,PQ128x4fs"  # 64 B of codes a vector
    assert choose_factory(1_000_000, 512) == "IVF4096,PQ128x4fs"


def test_rerank_reorders_and_keeps_every_score(real):
    idx = CategoryIndex.build([str(i) for i in range(len(real))], real, real[::-1].copy())
    top = idx.search(real[0], 5, rerank_query=real[-8], k_recall=len(real), rerank_weight=1.0)
    assert top[0].product_id == "7"  # pure rerank: the row whose rerank vector is real[-8]
    assert all(c.rerank_score is not None and c.recall_score is not None for c in top)


@pytest.mark.parametrize("factory", ["Flat", "IVF64,PQ32x4fs"])
def test_add_remove_without_rebuild_then_compact(big, factory):
    base, queries = big
    base = base[:5000]
    ids = [f"p{i}" for i in range(len(base))]
    idx = CategoryIndex.build(ids, base, factory=factory, nprobe=64)
    gone = [c.product_id for c in idx.search(queries[0], 5)]
    assert idx.remove(gone + ["never-added"]) == 5 and len(idx) == len(base) - 5
    assert not set(gone) & {c.product_id for c in idx.search(queries[0], 50)}
    idx.add(["new"], queries[:1])  # no rebuild: the new product is found at once
    assert idx.search(queries[0], 1)[0].product_id == "new"
    idx.add(["new"], queries[1:2])  # same id again replaces it
    assert len(idx) == len(base) - 4 and idx.search(queries[1], 1)[0].product_id == "new"
    before = [c.product_id for c in idx.search(queries[2], 10)]
    assert idx.compact() == 6 and idx.index.ntotal == len(idx) == len(idx.ids)
    assert [c.product_id for c in idx.search(queries[2], 10)] == before


def test_retrain_when_the_catalog_grows(big):
    base, queries = big
    idx = CategoryIndex.build([f"p{i}" for i in range(2000)], base[:2000], factory="auto", flat_limit=3000)
    assert idx.factory == "Flat" and not idx.needs_retrain(flat_limit=3000)
    idx.add([f"p{i}" for i in range(2000, 8000)], base[2000:8000])
    assert idx.needs_retrain(flat_limit=3000)
    assert idx.retrain(flat_limit=3000).startswith("IVF") and idx.trained_on == 8000
    assert not idx.needs_retrain(flat_limit=3000, growth=2.0)
    idx.set_params(nprobe=64)
    assert _recall(_rows(idx.search_batch(queries, 10)), _truth(base[:8000], queries)) >= 0.95


def test_sharded_build_equals_single_build(big):
    base, queries = big
    ids = [f"p{i}" for i in range(len(base))]
    single = CategoryIndex.build(ids, base, factory="IVF128,PQ64x4fs")
    merged = build_sharded(ids, base, factory="IVF128,PQ64x4fs", shards=4, workers=2)
    assert merged.index.ntotal == single.index.ntotal == len(base)
    a, b = single.search_batch(queries, 10), merged.search_batch(queries, 10)
    assert _rows(a) == _rows(b)
    assert np.allclose([c.approx_score for r in a for c in r], [c.approx_score for r in b for c in r])


def _set_with_products(base, n=3000):
    s = IndexSet(MODELS, factory="auto", flat_limit=1000)
    ids = [f"p{i}" for i in range(n)]
    s.build_category("upper", ids, base[:n], base[:n])
    brands = ["acme", "zenith", "nova"]
    s.store.put([{"product_id": p, "title": f"shirt {i}", "brand": brands[i % 3], "price": float(i % 100),
                  "category": "upper"} for i, p in enumerate(ids)])
    return s


def test_index_set_round_trip_mmap_and_mismatch(tmp_path, big):
    base, queries = big
    s = _set_with_products(base)
    assert s["upper"].factory.startswith("IVF")
    s.save(tmp_path / "idx")
    s.save(tmp_path / "idx")  # overwrite in place, atomically
    back = IndexSet.load(tmp_path / "idx", MODELS)
    assert isinstance(back["upper"].vectors.base, np.memmap)
    assert back.counts() == {"upper": 3000, "lower": 0, "footwear": 0, "dress": 0}
    assert _rows(back["upper"].search_batch(queries, 10)) == _rows(s["upper"].search_batch(queries, 10))
    assert back.store.get(["p1"])["p1"]["title"] == "shirt 1"
    manifest = back.manifest()
    assert manifest["indexes"]["upper"]["factory"].startswith("IVF") and manifest["models"] == MODELS
    back.add("upper", [{"product_id": "x1", "title": "added after load"}], queries[:1], queries[:1])
    assert back.search("upper", queries[0], 1)[0].product_id == "x1"
    other = {**MODELS, "recall": {**MODELS["recall"], "weights_sha256": "def"}}
    with pytest.raises(IndexMismatch, match="rebuild"):
        IndexSet.load(tmp_path / "idx", other)
    assert not list(tmp_path.glob("idx.*"))  # no temp or old folders left behind


def test_filters_return_the_best_allowed_products(big):
    base, queries = big
    s = _set_with_products(base)
    for filters in ({"brand": "Zenith"}, {"price_min": 10, "price_max": 12}, {"brand": "nova", "price_max": 5}):
        got = s.search("upper", queries[0], 5, filters=filters)
        meta = s.store.get([c.product_id for c in got])
        allowed = [i for i in range(3000) if (("brand" not in filters or ["acme", "zenith", "nova"][i % 3]
                                               == filters["brand"].lower())
                                              and filters.get("price_min", 0) <= i % 100 <= filters.get("price_max", 1e9))]
        best = sorted(allowed, key=lambda i: -float(base[i] @ queries[0]))[:5]
        assert [c.product_id for c in got] == [f"p{i}" for i in best]
        assert all(m["brand"] in ("zenith", "nova", "acme") for m in meta.values())
    assert s.search("upper", queries[0], 5, filters={"brand": "nobody"}) == []
    with pytest.raises(ValueError, match="unknown filter"):
        s.search("upper", queries[0], 5, filters={"colour": "red"})


def test_remove_from_the_set_takes_it_out_of_store_and_index(big):
    base, queries = big
    s = _set_with_products(base)
    top = s.search("upper", queries[0], 1)[0].product_id
    assert s.remove([top, "unknown"]) == 1
    assert s.store.get([top]) == {} and top not in {c.product_id for c in s.search("upper", queries[0], 20)}
    assert s.maintain()["upper"] == "compacted 1 tombstones"


SAVER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from indexes.index_set import IndexSet
from indexes.synthetic import grow_embeddings
models = {models!r}
base = grow_embeddings(np.eye(256, dtype=np.float32)[:50], 40_000, seed=2)
s = IndexSet.load({folder!r}, models)
print("ready", flush=True)
for i in range(1000):
    s.add("lower", [{{"product_id": f"loop{{i}}-{{j}}"}} for j in range(2000)], base[:2000], base[:2000])
    s.save({folder!r})
"""


def test_a_killed_save_leaves_a_loadable_index(tmp_path, big):
    base, _ = big
    folder = tmp_path / "idx"
    _set_with_products(base).save(folder)
    script = SAVER.format(root=str(ROOT), models=MODELS, folder=str(folder))
    for delay in (0.3, 0.7, 1.1):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        back = IndexSet.load(folder, MODELS)  # the old or the new index, whole, never a broken one
        assert back.counts()["upper"] == 3000 and back.counts()["lower"] % 2000 == 0
        assert back["lower"].index.ntotal == back.counts()["lower"]
        back.store.close()


def test_local_rerank_finds_the_product_of_a_partial_view(reid_weights, tmp_path):
    """The default reranker (reid-local rows of 49 parts) on real photos: a shifted, partial view
    of a catalog photo finds its product first, and the index keeps its parts through save/load."""
    from detectors.embedders import build_embedder
    from pipeline.dataset import list_photos
    from pipeline.images import load_image

    photos = [load_image(p.path, max_side=256) for p in list_photos(CATALOG / "test")[::9][:40]]
    recall = build_embedder("reid", checkpoint=reid_weights, device="cpu", catalog_views=[0.8])
    local = build_embedder("reid-local", checkpoint=reid_weights, device="cpu")
    assert local.parts == 49
    ids = [f"p{i}" for i in range(len(photos))]
    idx = CategoryIndex.build(ids, recall.embed_catalog(photos), local.embed_catalog(photos), rerank_parts=49)
    views = [p[p.shape[0] // 5:, : p.shape[1] * 3 // 4] for p in photos[:10]]  # lower 80 %, left 75 %
    q, rq = recall.embed(views), local.embed(views)
    found = [idx.search(q[i], 3, rerank_query=rq[i], rerank_weight=0.8) for i in range(10)]
    assert sum(r[0].product_id == ids[i] for i, r in enumerate(found)) >= 9
    assert all(-1 <= c.rerank_score <= 1 + 1e-5 for r in found for c in r)
    idx.save(tmp_path / "upper")
    back = CategoryIndex.load(tmp_path / "upper")
    assert back.rerank_parts == 49
    again = [back.search(q[i], 3, rerank_query=rq[i], rerank_weight=0.8) for i in range(10)]
    assert [[c.product_id for c in r] for r in again] == [[c.product_id for c in r] for r in found]
    with pytest.raises(ValueError, match="parts"):
        CategoryIndex(256, 100, rerank_parts=49)
