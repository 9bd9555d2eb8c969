"""Every endpoint through the Flask test client, on a real index of real catalog photos."""

import base64
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from api import create_app
from api.encode import mask_rle, rle_decode
from pipeline.catalog import index_folder
from pipeline.config import load_config

from .conftest import CATALOG, PEOPLE, png_header

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, reid_weights):
    out = tmp_path_factory.mktemp("api") / "index"
    index_folder(CATALOG / "test", out, load_config(), limit_per_class=6)
    return out


@pytest.fixture
def app(built_index, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(built_index, index)
    app = create_app({"api": {"index": str(index), "keys": [KEY], "image_dir": str(tmp_path / "images")},
                      "load_in_background": False})
    assert app.extensions["shopfluence"].state == "ready", app.extensions["shopfluence"].error
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def photo_bytes(name="ochuman_000817.jpg"):
    return (PEOPLE / name).read_bytes()


def catalog_photo(label="t-shirt", i=0):
    return sorted((CATALOG / "validation" / label).glob("*.jpg"))[i]


def test_health_ready_openapi_metrics_and_page(client):
    assert client.get("/healthz").json["status"] == "ok"
    ready = client.get("/readyz").json
    assert ready["state"] == "ready" and ready["counts"]["upper"] == 24
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.") and "/v1/looks" in spec["paths"]
    client.post("/v1/looks", data={"image": (io.BytesIO(photo_bytes()), "p.jpg")})
    text = client.get("/metrics").get_data(as_text=True)
    assert "shopfluence_requests_total" in text and 'shopfluence_stage_seconds_count{stage="embed"}' in text
    assert 'shopfluence_index_products{category="upper"} 24.0' in text
    page = client.get("/")
    assert page.status_code == 200 and b"/static/app.js" in page.data
    assert client.get("/static/app.js").status_code == 200


def test_look_multipart_returns_garments_masks_and_matches(client):
    r = client.post("/v1/looks?k=3", data={"image": (io.BytesIO(photo_bytes()), "outfit.jpg")})
    assert r.status_code == 200, r.json
    body = r.json
    assert body["pose"]["person"] and body["pose"]["full_body"]
    cats = {g["category"] for g in body["garments"]}
    assert "footwear" in cats and len(body["garments"]) >= 3
    w, h = body["image"]["width"], body["image"]["height"]
    for g in body["garments"]:
        x0, y0, x1, y1 = g["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        mask = rle_decode(g["mask"])
        assert mask.shape == (h, w) and mask.any()
        assert len(g["matches"]) == 3
        m = g["matches"][0]
        assert set(m) >= {"product_id", "title", "url", "image", "score", "recall_score", "rerank_score"}
        assert m["score"] >= g["matches"][-1]["score"]
    img = client.get(body["garments"][0]["matches"][0]["image"])
    assert img.status_code == 200 and img.mimetype == "image/jpeg"
    assert set(body["timings_ms"]) == {"pose", "detect", "mask", "embed", "rerank_embed", "search"}


def test_look_json_base64_and_options(client):
    b64 = base64.b64encode(photo_bytes()).decode()
    r = client.post("/v1/looks", json={"image": b64, "k": 2, "categories": ["upper"]})
    assert r.status_code == 200, r.json
    assert [g["category"] for g in r.json["garments"]] == ["upper"] and len(r.json["garments"][0]["matches"]) == 2
    full = client.post("/v1/looks", json={"image": "data:image/jpeg;base64," + b64}).json
    one = client.post("/v1/looks?garment=1", json={"image": b64}).json
    assert [g["index"] for g in one["garments"]] == [1]
    assert one["garments"][0]["box"] == full["garments"][1]["box"]
    assert client.post("/v1/looks?garment=40", json={"image": b64}).status_code == 404


def test_look_in_a_box_the_user_drew(client):
    b64 = base64.b64encode(photo_bytes()).decode()
    r = client.post("/v1/looks", json={"image": b64, "box": [100, 150, 300, 400], "category": "lower"})
    assert r.status_code == 200, r.json
    (g,) = r.json["garments"]
    assert g["category"] == "lower" and g["box"][0] >= 100 - 1e-6 and len(g["matches"]) == 5
    assert all(m["product_id"] for m in g["matches"])
    assert client.post("/v1/looks", json={"image": b64, "box": "1,2,3"}).status_code == 422
    assert client.post("/v1/looks", json={"image": b64, "box": [5000, 5000, 6000, 6000]}).status_code == 422


def test_filters_reach_the_index(client):
    b64 = base64.b64encode(photo_bytes()).decode()
    r = client.post("/v1/looks", json={"image": b64, "brand": "no-such-brand"})
    assert r.status_code == 200 and all(g["matches"] == [] for g in r.json["garments"])


@pytest.mark.parametrize(("payload", "ctype", "status"), [
    (b"%PDF-1.7\n1 0 obj<<>>endobj", "image/jpeg", 415),
    (b"hello, I am text", "image/jpeg", 415),
    (b"", "image/jpeg", 400),
    (None, None, 413),  # 20000 x 20000 claimed by a tiny PNG
    ("truncated", None, 400),
])
def test_bad_photos_get_clear_json_errors(client, payload, ctype, status):
    if payload is None:
        payload = png_header(20000, 20000)
    elif payload == "truncated":
        payload = photo_bytes()[:2000]
    r = client.post("/v1/looks", data={"image": (io.BytesIO(payload), "photo.jpg", ctype or "image/png")})
    assert r.status_code == status, r.json
    assert r.json["error"]["status"] == status and r.json["error"]["message"]


def test_bad_requests(client, app):
    assert client.post("/v1/looks", data={}).status_code == 400  # no photo
    assert client.post("/v1/looks", data=b"x", content_type="text/plain").status_code == 415
    assert client.post("/v1/looks", data=b"{bad json", content_type="application/json").status_code == 400
    assert client.post("/v1/looks", json={"image": "***"}).status_code == 422
    b64 = base64.b64encode(photo_bytes()).decode()
    for q in ("k=0", "k=abc", "k=100000", "categories=hats", "price_min=-1", "price_max=nan", "garment=-2"):
        r = client.post(f"/v1/looks?{q}", json={"image": b64})
        assert r.status_code == 422, (q, r.json)
    big = b"\xff\xd8\xff" + b"0" * (21 * 1024 * 1024)
    assert client.post("/v1/looks", data={"image": (io.BytesIO(big), "big.jpg")}).status_code == 413
    assert client.get("/v1/nothing").json["error"]["status"] == 404
    assert client.get("/v1/looks").status_code == 405


def test_text_search_needs_a_text_tower(client):
    r = client.post("/v1/search/text", json={"text": "red floral dress"})
    assert r.status_code == 501 and "fashion-clip" in r.json["error"]["message"]
    assert client.post("/v1/search/text", json={"text": ""}).status_code == 422


def test_writes_need_a_valid_key(client, app):
    photo = catalog_photo().read_bytes()
    form = {"product_id": "new-1", "image": (io.BytesIO(photo), "p.jpg")}
    assert client.post("/v1/products", data=dict(form)).status_code == 401
    form["image"] = (io.BytesIO(photo), "p.jpg")
    assert client.post("/v1/products", data=form, headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.delete("/v1/products/anything").status_code == 401
    assert app.extensions["shopfluence"].shop.index.store.count() == 54  # nothing written
    assert client.get("/v1/products/new-1").status_code == 404


def test_writes_refused_when_no_key_is_configured(built_index, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(built_index, index)
    app = create_app({"api": {"index": str(index), "keys": []}, "load_in_background": False})
    r = app.test_client().delete("/v1/products/x", headers={"X-API-Key": "anything"})
    assert r.status_code == 403 and "no API key" in r.json["error"]["message"]


def test_on_demand_add_is_searchable_at_once_then_delete(client, app, tmp_path):
    path = catalog_photo("pants", 3)
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # camera make: must not survive into the stored copy
    buf = io.BytesIO()
    Image.open(path).save(buf, "JPEG", exif=exif)
    form = {"product_id": "sku-42", "title": "Grey trousers", "brand": "Acme", "price": "59.5",
            "url": "https://shop.example/sku-42", "image": (io.BytesIO(buf.getvalue()), "x.jpg")}
    r = client.post("/v1/products", data=form, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 201, r.json
    product = r.json["product"]
    assert product["category"] == "lower" and product["tags"][0]["box"]
    stored = client.get(product["image"])
    assert stored.status_code == 200 and "SecretCam" not in str(Image.open(io.BytesIO(stored.data)).getexif())
    assert client.get("/v1/products/sku-42").json["product"]["brand"] == "Acme"
    look = client.post("/v1/looks?category=lower&k=1", data={"image": (io.BytesIO(path.read_bytes()), "q.jpg")}).json
    assert look["garments"][0]["matches"][0]["product_id"] == "sku-42"
    sim = client.get("/v1/products/sku-42/similar?k=3").json
    assert sim["category"] == "lower" and len(sim["matches"]) == 3
    assert "sku-42" not in [m["product_id"] for m in sim["matches"]]
    assert client.get("/v1/products/sku-42/similar?k=3&brand=acme").json["matches"] == []
    assert client.delete("/v1/products/sku-42", headers={"X-API-Key": KEY}).json == {"deleted": "sku-42"}
    assert client.get("/v1/products/sku-42").status_code == 404
    assert client.delete("/v1/products/sku-42", headers={"X-API-Key": KEY}).status_code == 404
    bad = client.post("/v1/products", json={"product_id": "../etc", "images": []}, headers={"X-API-Key": KEY})
    assert bad.status_code == 422


def test_not_ready_is_503_with_the_reason(tmp_path):
    app = create_app({"api": {"index": str(tmp_path / "missing")}, "load_in_background": False})
    c = app.test_client()
    r = c.get("/readyz")
    assert r.status_code == 503 and "no index" in r.json["error"] and r.headers["Retry-After"]
    r = c.post("/v1/looks", data={"image": (io.BytesIO(photo_bytes()), "p.jpg")})
    assert r.status_code == 503 and "no index" in r.json["error"]["message"]
    assert c.get("/healthz").status_code == 200


def test_mask_rle_round_trip(rng):
    m = rng.random((37, 23)) > 0.6
    assert (rle_decode(mask_rle(m)) == m).all()
    full = np.ones((4, 5), bool)
    assert mask_rle(full)["counts"] == [0, 20] and (rle_decode(mask_rle(full)) == full).all()
