"""End to end on real photos: a real index from real catalog photos, our committed model."""

import json
import subprocess
import sys

import numpy as np
import pytest

from detectors.reid import CLASSES
from pipeline.catalog import index_folder
from pipeline.config import load_config
from pipeline.images import load_image
from pipeline.look import ShopTheLook

from .conftest import CATALOG, NO_PERSON, PEOPLE


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, reid_weights):
    out = tmp_path_factory.mktemp("idx") / "index"
    report = index_folder(CATALOG / "test", out, load_config(), limit_per_class=6)
    assert report.added == {"upper": 24, "lower": 18, "footwear": 6, "dress": 6}
    assert any("hat" in reason for _, reason in report.skipped)
    return out


@pytest.fixture(scope="module")
def shop(index_dir):
    return ShopTheLook.from_config(index_dir, load_config())


def test_look_on_a_full_body_photo(shop, people_photo):
    r = shop.look(people_photo, k=3)
    h, w = people_photo.shape[:2]
    assert r.pose.person and r.pose.full_body
    assert len(r.garments) >= 3
    cats = set(r.garments.categories)
    assert "footwear" in cats and ({"upper", "lower"} <= cats or "dress" in cats)
    assert (r.garments.boxes[:, [0, 2]] <= w).all() and (r.garments.boxes[:, [1, 3]] <= h).all()
    assert (r.garments.boxes >= 0).all()
    assert r.garments.masks.shape == (len(r.garments), h, w)
    for g, matches in r.items():
        assert g.mask.any() and len(matches) == 3
        assert all(m.product["category"] == g.category for m in matches)
        assert matches[0].score >= matches[-1].score and matches[0].rerank_score is not None
    assert set(r.timings_ms) == {"pose", "detect", "mask", "embed", "rerank_embed", "search"}


def test_upper_is_above_lower_above_shoes(shop, people_photo):
    g = shop.look(people_photo).garments
    center = {c: (b[1] + b[3]) / 2 for c, b in zip(g.categories, g.boxes)}
    top = center.get("upper", center.get("dress"))
    assert top < center["footwear"]
    if "lower" in center:
        assert top < center["lower"] < center["footwear"]


def test_a_catalog_photo_finds_itself(shop):
    photo = sorted((CATALOG / "test" / "pants").glob("*.jpg"))[0]
    r = shop.look(load_image(photo), category="lower")
    assert not r.pose.person and len(r.garments) == 1
    assert r.garments.categories[0] == "lower" and r.garments.labels[0] in CLASSES
    assert r.matches[0][0].product_id == photo.stem


def test_no_person_photo_is_one_garment(shop):
    r = shop.look(load_image(NO_PERSON / "picture6.jpg"))
    assert len(r.garments) == 1 and r.garments.masks[0].all()


def test_mirror_selfie_garments_come_from_the_person_mask(shop):
    r = shop.look(load_image(PEOPLE / "deepfasion2_000264.jpg"))
    assert r.pose.person and r.pose.keypoints is None and len(r.garments) >= 1
    assert all(len(m) > 0 for m in r.matches)


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_look_json(index_dir):
    p = _cli("look", str(PEOPLE / "ochuman_000817.jpg"), "--index", str(index_dir), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert len(out["garments"]) >= 3 and out["garments"][0]["matches"]


def test_cli_bad_photo_is_one_clear_line(index_dir, tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"%PDF-1.4 nope")
    p = _cli("look", str(bad), "--index", str(index_dir))
    assert p.returncode == 2 and "PDF" in p.stderr and "Traceback" not in p.stderr


def test_cli_missing_weights_names_the_file(index_dir, tmp_path):
    import os

    env = {**os.environ, "SHOPFLUENCE_WEIGHTS": str(tmp_path)}
    p = _cli("look", str(PEOPLE / "ochuman_000817.jpg"), "--index", str(index_dir), env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "shopfluence-reid-v2.pt" in p.stderr and "reid-v2" in p.stderr


def test_index_refuses_other_weights(index_dir, tmp_path):
    from detectors.reid import build_reid, save_release
    from indexes.index_set import IndexMismatch

    model, cfg = build_reid()
    save_release(model, cfg, tmp_path / "other.pt")
    other = load_config(embedder={"weights": str(tmp_path / "other.pt")})
    with pytest.raises(IndexMismatch):
        ShopTheLook.from_config(index_dir, other)


def test_bad_catalog_photo_is_skipped_not_fatal(tmp_path):
    folder = tmp_path / "cat"
    (folder / "shoes").mkdir(parents=True)
    good = sorted((CATALOG / "test" / "shoes").glob("*.jpg"))[:2]
    for p in good:
        (folder / "shoes" / p.name).write_bytes(p.read_bytes())
    (folder / "shoes" / "broken.jpg").write_bytes(good[0].read_bytes()[:500])
    (folder / "shoes" / "empty.jpg").write_bytes(b"")
    report = index_folder(folder, tmp_path / "idx", load_config())
    assert report.added["footwear"] == 2 and len(report.skipped) == 2
    assert np.all([("corrupt" in r or "empty" in r) for _, r in report.skipped])


def test_regions_clipped_to_a_sliver_are_dropped(shop, people_photo):
    h = people_photo.shape[0]
    cut = people_photo[: int(0.93 * h)]  # the feet leave the frame
    g = shop.look(cut).garments
    sides = np.minimum(g.boxes[:, 2] - g.boxes[:, 0], g.boxes[:, 3] - g.boxes[:, 1])
    assert len(g) >= 1 and (sides >= 8).all()
