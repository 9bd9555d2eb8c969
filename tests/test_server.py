"""A real gunicorn on 127.0.0.1: real HTTP requests, 200+ hostile ones, and the upload page
driven in headless Chromium."""

import base64
import json
import random
import shutil
import struct
import urllib.parse
from pathlib import Path

import pytest

from api.launch import free_port, multipart, request, start, stop, wait_ready
from pipeline.catalog import index_folder
from pipeline.config import load_config

from .conftest import CATALOG, PEOPLE, png_header

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "reports" / "test-artifacts"
KEY = "server-test-key"
CHROMIUM = "/usr/bin/chromium"


def worker_pids(master: int) -> set[int]:
    pids = set()
    for task in Path(f"/proc/{master}/task").iterdir():
        children = (task / "children").read_text().split()
        pids |= {int(p) for p in children}
    return pids


@pytest.fixture(scope="module")
def server(tmp_path_factory, reid_weights):
    index = tmp_path_factory.mktemp("served") / "index"
    index_folder(CATALOG / "test", index, load_config(), limit_per_class=6)
    port = free_port()
    proc = start(index, port, keys=KEY)
    try:
        wait_ready(port, proc)
        yield port, proc
    finally:
        stop(proc)
        shutil.rmtree(index.parent / "index-images", ignore_errors=True)


def test_real_http_look_and_a_write_seen_by_every_worker(server):
    port, proc = server
    photo = (PEOPLE / "ochuman_000817.jpg").read_bytes()
    body, ctype = multipart({}, [("image", "outfit.jpg", photo, "image/jpeg")])
    status, data, _ = request(port, "POST", "/v1/looks?k=2", body, {"Content-Type": ctype})
    assert status == 200
    look = json.loads(data)
    assert len(look["garments"]) >= 3 and all(len(g["matches"]) == 2 for g in look["garments"])

    shirt = sorted((CATALOG / "validation" / "shirt").glob("*.jpg"))[0].read_bytes()
    add = json.dumps({"product_id": "srv-1", "title": "added over HTTP", "images": [base64.b64encode(shirt).decode()]})
    status, data, _ = request(port, "POST", "/v1/products", add, {"Content-Type": "application/json", "X-API-Key": KEY})
    assert status == 201, data
    seen = {json.loads(request(port, "GET", "/v1/products/srv-1")[1])["product"]["title"] for _ in range(8)}
    assert seen == {"added over HTTP"}  # whichever worker answers, it sees the write
    assert request(port, "DELETE", "/v1/products/srv-1", headers={"X-API-Key": KEY})[0] == 200
    assert {request(port, "GET", "/v1/products/srv-1")[0] for _ in range(8)} == {404}
    status, data, _ = request(port, "GET", "/metrics")
    assert status == 200 and b"shopfluence_requests_total" in data


def hostile_requests(photo: bytes, png: bytes, product: str) -> list[tuple[str, str, bytes | None, dict]]:
    """(method, path, body, headers): every one must get a 4xx, never a 5xx or a dead worker."""
    rng = random.Random(7)
    reqs = []

    def upload(data, filename="photo.jpg", ctype="image/jpeg", path="/v1/looks", fields=None, headers=None):
        body, mct = multipart(fields or {}, [("image", filename, data, ctype)])
        reqs.append(("POST", path, body, {"Content-Type": mct, **(headers or {})}))

    for cut in rng.sample(range(10, len(photo) - 10), 40):
        upload(photo[:cut])  # truncated JPEG
    for cut in rng.sample(range(9, len(png) - 1), 25):
        upload(png[:cut], "x.png", "image/png")  # truncated PNG
    for n in (0, 1, 3, 16, 100, 1000, 5000, 20000, 100000, 300000):
        upload(rng.randbytes(n), "r.jpg")  # random bytes
        upload(b"\xff\xd8\xff" + rng.randbytes(n), "r.jpg")  # JPEG magic, then noise
    upload(b"%PDF-1.4\n" + photo, "cv.jpg")  # PDF with a JPEG inside
    upload(photo + b"PK\x03\x04" + rng.randbytes(500), "zip.jpg")  # JPEG + ZIP polyglot: a valid photo (200 ok)
    reqs.pop()
    upload(b"GIF89a/*" + rng.randbytes(200) + b"*/=alert(1);", "x.gif", "image/gif")
    upload(b"<svg xmlns='http://www.w3.org/2000/svg' onload='alert(1)'/>", "x.svg", "image/svg+xml")
    upload(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a SYSTEM 'file:///etc/passwd'>]><x>&a;</x>", "x.jpg")
    for w, h in ((20000, 20000), (100000, 100000), (65535, 1), (1, 65535), (50000, 2000), (2**31 - 1, 2**31 - 1)):
        upload(png_header(w, h), "bomb.png", "image/png")
    bmp_info = struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 0, 0, 0, 0)
    upload(b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + bmp_info, "b.bmp")
    for ctype in ("text/plain", "application/xml", "application/octet-stream", "image/jpeg", ""):
        reqs.append(("POST", "/v1/looks", photo[:5000], {"Content-Type": ctype} if ctype else {}))
    for raw in ("{", "[]", "null", "1", '"x"', '{"image": 5}', '{"image": "!!!"}', '{"image": ["a"]}',
                '{"images": {"a": 1}}', "[" * 5000 + "]" * 5000, '{"image": "' + "A" * 1001 + '"}', "\x00\x01"):
        reqs.append(("POST", "/v1/looks", raw.encode(), {"Content-Type": "application/json"}))
    b64 = base64.b64encode(photo).decode()
    for q in ("k=-1", "k=abc", "k=1e99", "k=99999999999999999999", "categories=../../etc", "categories=upper,hats",
              "price_min=nan", "price_max=-inf", "price_min=1e400", "box=1,2,3", "box=a,b,c,d", "box=nan,0,1,1",
              "box=0,0,1e308,1e308", "garment=1000", "garment=-1", "category=shoes", "brand[]=x&k=%00"):
        reqs.append(("POST", f"/v1/looks?{q}", json.dumps({"image": b64}).encode(), {"Content-Type": "application/json"}))
    for pid in ("1' OR '1'='1", "'; DROP TABLE products; --", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%00",
                "a" * 3000, "\u202e", "<script>", "${jndi:ldap://x}", "COM1", " ", ".", "..", "~root"):
        q = urllib.parse.quote(pid, safe="")
        for suffix in ("", "/similar", "/image"):
            reqs.append(("GET", f"/v1/products/{q}{suffix}", None, {}))
        reqs.append(("DELETE", f"/v1/products/{q}", None, {"X-API-Key": KEY}))  # keyed, but nothing to delete
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": KEY + "0"},
                    {"Authorization": "Bearer"}, {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()},
                    {"X-API-Key": ""}, {"Authorization": f"Bearer {KEY}x"}):
        upload(photo, path="/v1/products", fields={"product_id": "intruder"}, headers=headers)
        reqs.append(("DELETE", f"/v1/products/{product}", None, headers))
    for method, path in (("PUT", "/v1/looks"), ("GET", "/v1/looks"), ("PATCH", "/v1/products/x"),
                         ("POST", "/healthz"), ("GET", "/v1/search/text"), ("TRACE", "/")):
        reqs.append((method, path, None, {}))
    reqs.append(("POST", "/v1/looks", b"\xff\xd8\xff" + b"0" * (21 * 1024 * 1024), {"Content-Type": "image/jpeg"}))
    return reqs


def test_hostile_requests_never_500_never_kill_a_worker_never_write(server):
    port, proc = server
    photo = (PEOPLE / "ochuman_000817.jpg").read_bytes()
    import io  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.open(PEOPLE / "ochuman_000817.jpg").save(buf, "PNG")
    some_product = sorted((CATALOG / "test" / "shoes").glob("*.jpg"))[0].stem
    before_pids = worker_pids(proc.pid)
    counts_before = json.loads(request(port, "GET", "/readyz")[1])["counts"]
    reqs = hostile_requests(photo, buf.getvalue(), some_product)
    assert len(reqs) >= 200
    statuses = []
    for method, path, body, headers in reqs:
        status, data, _ = request(port, method, path, body, headers)
        statuses.append(status)
        assert status < 500, (method, path[:80], status, data[:300])
    assert worker_pids(proc.pid) == before_pids  # no worker died or was replaced
    assert json.loads(request(port, "GET", "/readyz")[1])["counts"] == counts_before  # nothing written
    assert request(port, "GET", f"/v1/products/{some_product}")[0] == 200  # the keyless deletes did nothing
    assert request(port, "GET", "/v1/products/intruder")[0] == 404
    print(f"{len(reqs)} hostile requests: " + ", ".join(f"{s}x{statuses.count(s)}" for s in sorted(set(statuses))))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (make test installs it)")
def test_upload_page_in_headless_chromium(server):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    port, _ = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/")
        page.set_input_files("#file", str(PEOPLE / "ochuman_000817.jpg"))
        page.wait_for_selector(".garment", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.match img').length >= 6")
        page.wait_for_function("[...document.querySelectorAll('.match img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator(".garment").count() >= 3
        assert "garment(s)" in page.inner_text("#status")
        page.screenshot(path=str(ARTIFACTS / "upload-page.png"), full_page=True)
        # click inside the first garment's box: only that garment is searched again, with 10 matches
        look_box = page.evaluate("look.garments[0].box")
        scale = page.evaluate("canvas.width / look.image.width")
        rect = page.locator("#photo").bounding_box()
        x = rect["x"] + (look_box[0] + look_box[2]) / 2 * scale * rect["width"] / page.evaluate("canvas.width")
        y = rect["y"] + (look_box[1] + look_box[3]) / 2 * scale * rect["height"] / page.evaluate("canvas.height")
        page.mouse.click(x, y)
        page.wait_for_function("document.querySelector('.garment[data-garment=\"0\"]').querySelectorAll('.match').length === 10")
        page.screenshot(path=str(ARTIFACTS / "upload-page-garment.png"), full_page=True)
        browser.close()
