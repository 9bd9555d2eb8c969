"""Start a real gunicorn serving the API on loopback, and wait until every worker is ready
(used by `make demo`, the load benchmark and the server tests)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(index: str | Path, port: int, *, workers: int = 2, threads: int = 4, keys: str = "",
          quiet: bool = True) -> subprocess.Popen:
    env = {**os.environ, "SHOPFLUENCE_INDEX": str(index), "SHOPFLUENCE_BIND": f"127.0.0.1:{port}",
           "SHOPFLUENCE_WORKERS": str(workers), "SHOPFLUENCE_THREADS": str(threads), "SHOPFLUENCE_API_KEYS": keys,
           "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "api" / "gunicorn.conf.py"),
                             "api.wsgi:app"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL if quiet else None,
                            stderr=subprocess.PIPE)


def request(port: int, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
            timeout: float = 60):
    """(status, body bytes, headers) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        try:
            conn.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before the whole body was sent: read that answer
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen, workers: int = 2, timeout: float = 180) -> None:
    """Until every worker has answered /readyz with 200 (each loads its own models)."""
    t, ready = time.time(), set()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            status, data, _ = request(port, "GET", "/readyz", timeout=5)
            if status == 200:
                ready.add(json.loads(data)["pid"])
                if len(ready) >= workers:
                    return
                continue
            if status == 503 and json.loads(data).get("state") == "failed":
                raise RuntimeError(f"the server cannot start: {json.loads(data)['error']}")
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"gunicorn did not become ready ({len(ready)} of {workers} workers)")


def multipart(fields: dict, files: list[tuple[str, str, bytes, str]],
              boundary: str = "shopfluence-boundary-7f3a") -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    out = b""
    for k, v in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
    for name, filename, data, ctype in files:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
