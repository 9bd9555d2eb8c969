import hashlib
import http.server
import threading

import pytest

from pipeline import weights


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOPFLUENCE_WEIGHTS", str(tmp_path))
    return tmp_path


def test_manifest_names_every_slot():
    slots = weights.load_manifest()
    assert {"reid-v2", "fashion-clip", "dinov2-vits14", "sam-vit-b", "yolo-pose"} <= set(slots)
    for s in slots.values():
        assert s.source and s.license


def test_missing_file_message_names_slot_file_and_how(weights_dir):
    with pytest.raises(weights.MissingWeights) as e:
        weights.slot("sam-vit-b").require()
    msg = str(e.value)
    assert "sam-vit-b" in msg and "sam_vit_b_01ec64.pth" in msg and "weights fetch sam-vit-b" in msg


def test_fetch_from_a_local_http_server(weights_dir, tmp_path_factory, monkeypatch):
    served = tmp_path_factory.mktemp("served")
    payload = b"not really a checkpoint" * 100
    (served / "ckpt.pth").write_bytes(payload)
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **kw)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ckpt.pth"
    try:
        path = weights.fetch("sam-vit-b", url=url, timeout=10)
        assert path.read_bytes() == payload and path.name == "sam_vit_b_01ec64.pth"
        # a published sha256 that does not match is refused and nothing is left behind
        real = weights.slot("sam-vit-b")
        monkeypatch.setattr(weights, "slot", lambda n: weights.Slot(**{**real.__dict__, "sha256": "0" * 64}))
        path.unlink()
        with pytest.raises(ValueError, match="does not match"):
            weights.fetch("sam-vit-b", url=url, timeout=10)
        assert not list(weights_dir.iterdir())
        good = hashlib.sha256(payload).hexdigest()
        monkeypatch.setattr(weights, "slot", lambda n: weights.Slot(**{**real.__dict__, "sha256": good}))
        assert weights.fetch("sam-vit-b", url=url, timeout=10).is_file()
    finally:
        server.shutdown()


def test_committed_model_matches_its_checksum():
    assert weights.check("reid-v2") == "ok"
