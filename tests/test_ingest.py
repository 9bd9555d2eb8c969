"""Batch ingestion of a real 200-product catalog with 5% bad rows: rejects with reasons, tags,
near-duplicates, resume after SIGKILL, the Ray engine, hot rows, and ``catalog add``."""

import csv
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import load_config
from pipeline.dataset import list_photos
from pipeline.images import load_image
from pipeline.ingest import IngestOptions, ingest, near_duplicates
from pipeline.look import ShopTheLook
from pipeline.types import CATEGORIES
from tests.conftest import CATALOG, png_header

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 20
GOOD = 187  # + 3 more indexed rows (a URL, a missing second photo, a near-duplicate) + 10 bad rows = 200


@pytest.fixture(scope="module")
def photo_server():
    """Real HTTP for URL rows: serves the catalog's test folder on a free local port."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(CATALOG / "test"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def write_catalog(folder: Path, server: str) -> tuple[Path, dict]:
    """200 rows of real photos; 10 bad ones (5%), each with the reason the rejects file must give."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [p for p in list_photos(CATALOG / "test") if p.category][:GOOD + 4]
    rows, bad = [], {}
    for i, p in enumerate(photos[:GOOD]):
        rows.append({"product_id": p.product_id, "images": str(p.path), "title": f"{p.label} {i}",
                     "brand": ["Acme", "Borealis"][i % 2], "price": f"{10 + i}",
                     "category": p.category if i % 3 else "",  # a third left for our model to decide
                     "hot": "yes" if i % 10 == 0 else ""})
    extra = photos[GOOD:]
    (folder / "broken.jpg").write_bytes(extra[0].path.read_bytes()[:600])
    (folder / "paper.jpg").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n")
    (folder / "bomb.png").write_bytes(png_header(20000, 20000))
    url_photo = f"{server}/{extra[1].path.parent.name}/{extra[1].path.name}"
    specials = [
        ({"product_id": "missing-file", "images": "nowhere/lost.jpg"}, "cannot read"),
        ({"product_id": "corrupt", "images": "broken.jpg"}, "cannot decode"),
        ({"product_id": "pdf-named-jpg", "images": "paper.jpg"}, "PDF"),
        ({"product_id": "huge", "images": "bomb.png"}, "MP limit"),
        ({"product_id": "no-images", "images": ""}, "no image"),
        ({"product_id": rows[0]["product_id"], "images": str(extra[2].path)}, "duplicate product_id"),
        ({"product_id": "bad-price", "images": str(extra[2].path), "price": "cheap"}, "price must be a number"),
        ({"product_id": "bad-category", "images": str(extra[2].path), "category": "hats"}, "category must be one of"),
        ({"product_id": "../etc/passwd", "images": str(extra[2].path)}, "product_id must be"),
        ({"product_id": "url-404", "images": f"{server}/nope/none.jpg"}, "404"),
        # indexed: a URL photo, and a product whose second photo is missing (that photo is reported)
        ({"product_id": "from-url", "images": url_photo, "category": extra[1].category}, None),
        ({"product_id": "two-photos", "images": f"{extra[3].path}|missing-second.jpg", "category": extra[3].category},
         "photo skipped"),
        # the same photo sold as two products: a near-duplicate
        ({"product_id": "dup-b", "images": str(photos[5].path), "category": photos[5].category}, None),
    ]
    for n, (row, reason) in enumerate(specials):
        rows.insert(7 + 15 * n, row)
        if reason:
            bad[row["product_id"] if reason != "duplicate product_id" else "duplicate"] = reason
    path = folder / "catalog.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["product_id", "images", "title", "brand", "price", "category", "hot"])
        w.writeheader()
        w.writerows(rows)
    assert len(rows) == 200 and sum(1 for r in bad.values() if r != "photo skipped") == 10
    return path, bad


def snapshot(index_dir: Path) -> dict:
    """What must be equal between two runs: per category the ids, vectors and store rows."""
    from indexes.index_set import IndexSet

    index = IndexSet.load(index_dir)
    out = {}
    for c in CATEGORIES:
        row_of = index[c].row_of()
        ids = sorted(row_of)
        rows = np.array([row_of[i] for i in ids], np.int64)
        out[c] = (ids, index[c].vectors.take(rows).astype(np.float32) if len(rows) else None)
    store = index.store.get([i for c in CATEGORIES for i in out[c][0]])
    out["store"] = {k: {f: v for f, v in r.items() if f != "added"} for k, r in store.items()}
    return out


def assert_same(a: dict, b: dict) -> None:
    for c in CATEGORIES:
        assert a[c][0] == b[c][0], c
        if a[c][1] is not None:
            np.testing.assert_allclose(a[c][1], b[c][1], atol=2e-3)  # fp16 storage
    assert a["store"] == b["store"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, photo_server):
    return write_catalog(tmp_path_factory.mktemp("catalog"), photo_server)


@pytest.fixture(scope="module")
def reference(catalog, tmp_path_factory):
    """One uninterrupted run of the local engine."""
    index = tmp_path_factory.mktemp("ref") / "index"
    report = ingest(catalog[0], index, load_config(), IngestOptions(chunk_size=CHUNK))
    return index, report


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_good_rows_are_searchable_bad_rows_rejected_with_reasons(catalog, reference):
    path, bad = catalog
    index, report = reference
    assert sum(report.indexed.values()) == GOOD + 3  # the 188, the URL row, the two-photo row, dup-b
    assert report.rejected == 10 and report.rejected_images == 1
    rejects = _lines(Path(report.work) / "rejects.jsonl")
    for key, reason in bad.items():
        hits = [r for r in rejects if (r["product_id"] == key or key == "duplicate" and "duplicate" in r["reason"])]
        assert hits and reason in hits[0]["reason"], (key, hits)
        assert all(r["line"] > 1 for r in hits)
    tags = _lines(Path(report.work) / "tags.jsonl")
    assert len(tags) == GOOD + 3 and len({t["product_id"] for t in tags}) == len(tags)
    assert all(t["category"] in CATEGORIES and t["photos"][0]["box"] for t in tags)
    assert sum(not t["category_given"] for t in tags) > 50  # our class head decided those
    dups = _lines(Path(report.work) / "near_duplicates.jsonl")
    assert any({"dup-b"} < set(g["products"]) for g in dups)

    shop = ShopTheLook.from_config(index, load_config())
    assert shop.index.store.count() == GOOD + 3
    for row in [r for r in csv.DictReader(open(path)) if r["title"]][30:33]:
        result = shop.look(load_image(row["images"]), k=1)
        assert next(iter(result.items()))[1][0].product_id == row["product_id"]
    assert "from-url" in shop.index.store.get(["from-url"])


def test_resume_after_sigkill_equals_uninterrupted_run(catalog, reference, tmp_path):
    index = tmp_path / "index"
    cmd = [sys.executable, "-m", "pipeline.cli", "catalog", "ingest", str(catalog[0]), "--index", str(index),
           "--chunk-size", str(CHUNK)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks = Path(f"{index}.ingest") / "chunks"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(chunks.glob("*.npz"))) < 4 and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    done = len(list(chunks.glob("*.npz")))
    assert 4 <= done < 10 and not index.exists(), "the run must be killed half-way"
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming: {done} of 10 chunks" in again.stderr
    assert_same(snapshot(index), snapshot(reference[0]))
    ref_work = Path(reference[1].work)
    for name in ("tags.jsonl", "rejects.jsonl", "near_duplicates.jsonl"):
        assert (Path(f"{index}.ingest") / name).read_text() == (ref_work / name).read_text(), name
    # a third run of the same catalog has nothing to do
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "nothing to do" in third.stderr


def test_ray_engine_gives_the_same_index_as_the_local_loop(catalog, reference, tmp_path):
    index = tmp_path / "index"
    report = ingest(catalog[0], index, load_config(), IngestOptions(engine="ray", workers=2, chunk_size=CHUNK))
    assert report.indexed == reference[1].indexed and report.rejected == reference[1].rejected
    assert_same(snapshot(index), snapshot(reference[0]))


def test_hot_rows_refresh_without_touching_the_rest(catalog, reference, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(reference[0], index)
    rows = list(csv.DictReader(open(catalog[0])))
    hot = [r for r in rows if r["hot"] == "yes"]
    for r in hot:
        r["title"] = "refreshed " + r["title"]
    hot[0]["images"] = rows[-1]["images"]  # a hot product with a new photo
    path = tmp_path / "catalog.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    before = snapshot(index)
    report = ingest(path, index, load_config(), IngestOptions(chunk_size=CHUNK), hot_column="hot")
    assert report.products == len(hot) and report.not_hot == len(rows) - len(hot)
    after = snapshot(index)
    hot_ids = {r["product_id"] for r in hot}
    assert after["store"].keys() == before["store"].keys()
    for pid, rec in after["store"].items():
        if pid in hot_ids:
            assert rec["title"].startswith("refreshed ")
        else:
            assert rec == before["store"][pid]
    cat = after["store"][hot[0]["product_id"]]["category"]
    i = after[cat][0].index(hot[0]["product_id"])
    old = dict(zip(*before[before["store"][hot[0]["product_id"]]["category"]]))[hot[0]["product_id"]]
    assert float(after[cat][1][i] @ old) < 0.99  # re-embedded from the new photo
    for c in CATEGORIES:  # every other product keeps its vector
        keep = [j for j, p in enumerate(after[c][0]) if p not in hot_ids]
        ref = dict(zip(*before[c])) if before[c][1] is not None else {}
        for j in keep:
            np.testing.assert_array_equal(after[c][1][j], ref[after[c][0][j]])
    # a list of ids works the same way
    ids_file = tmp_path / "hot.txt"
    ids_file.write_text(hot[1]["product_id"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "catalog", "ingest", str(path), "--index", str(index),
                        "--hot-ids", str(ids_file), "--work", str(tmp_path / "w2")], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "indexed 1 products" in r.stdout, r.stderr[-2000:]


def test_catalog_add_makes_one_product_searchable(reference, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(reference[0], index)
    photo = sorted((CATALOG / "validation" / "shoes").glob("*.jpg"))[1]  # [0] our class head calls outerwear
    product = {"product_id": "on-demand-1", "images": [str(photo)], "title": "Trail shoe", "price": 80}
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "catalog", "add", json.dumps(product),
                        "--index", str(index)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["category"] == "footwear"
    shop = ShopTheLook.from_config(index, load_config())
    assert next(iter(shop.look(load_image(photo), k=1).items()))[1][0].product_id == "on-demand-1"
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "catalog", "add", '{"product_id": "x", "images": []}',
                          "--index", str(index)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no image" in bad.stderr and "Traceback" not in bad.stderr


def test_near_duplicates_are_exact_within_the_distance():
    rng = np.random.default_rng(0)
    base = [int(x) for x in rng.integers(0, 2**63, 50)]
    hashes = [(f"p{i}", f"a{i}.jpg", h) for i, h in enumerate(base)]
    hashes.append(("q", "b.jpg", base[3] ^ 0b10010001))  # 3 bits from p3's photo
    hashes.append(("p3", "c.jpg", base[3] ^ 1))  # the same product's second photo: not reported alone
    hashes.append(("r", "d.jpg", base[9] ^ 0b111110000))  # 5 bits: too far at 4
    groups = near_duplicates(hashes, 4)
    assert [g["products"] for g in groups] == [["p3", "q"]]
    assert groups[0]["max_distance"] == 3  # b.jpg is 3 bits from a3.jpg, 2 from c.jpg
