import numpy as np
import pytest

from indexes.category import CategoryIndex
from indexes.index_set import IndexMismatch, IndexSet


def _unit(n, d, rng):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_index_is_exact(rng):
    idx = CategoryIndex(32)
    vecs = _unit(500, 32, rng)
    idx.add([f"p{i}" for i in range(500)], vecs)
    q = _unit(1, 32, rng)[0]
    top = idx.search(q, 10)
    truth = np.argsort(-(vecs @ q))[:10]
    assert [c.product_id for c in top] == [f"p{i}" for i in truth]
    assert np.allclose([c.recall_score for c in top], (vecs @ q)[truth], atol=1e-5)


def test_rerank_reorders_and_keeps_both_scores(rng):
    idx = CategoryIndex(8, rerank_dim=4)
    vecs, rr = _unit(50, 8, rng), _unit(50, 4, rng)
    idx.add([str(i) for i in range(50)], vecs, rr)
    q, qr = vecs[0], rr[7]
    top = idx.search(q, 5, rerank_query=qr, k_recall=50, rerank_weight=1.0)
    assert top[0].product_id == "7"  # pure rerank: the rerank twin wins
    assert all(c.rerank_score is not None and c.recall_score is not None for c in top)


def test_index_set_round_trip_and_mismatch(tmp_path, rng):
    models = {"recall": {"backend": "reid", "dim": 16, "weights_sha256": "abc", "image_size": 112}}
    s = IndexSet(models)
    s["upper"].add(["a", "b"], _unit(2, 16, rng))
    s.store.put([{"product_id": "a", "title": "shirt a", "category": "upper"}])
    s.save(tmp_path / "idx")
    s.save(tmp_path / "idx")  # overwrite in place, atomically
    back = IndexSet.load(tmp_path / "idx", models)
    assert back.counts()["upper"] == 2 and back.store.get(["a"])["a"]["title"] == "shirt a"
    other = {"recall": {**models["recall"], "weights_sha256": "def"}}
    with pytest.raises(IndexMismatch, match="rebuild"):
        IndexSet.load(tmp_path / "idx", other)
    assert not list(tmp_path.glob("idx.*"))  # no temp or old folders left behind
