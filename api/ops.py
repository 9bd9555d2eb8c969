"""Operations: the upload page, health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify

from api import metrics

bp = Blueprint("ops", __name__)
OPENAPI = Path(__file__).with_name("openapi.json")


def service():
    return current_app.extensions["shopfluence"]


@bp.get("/")
def page():
    return current_app.send_static_file("index.html")


@bp.get("/healthz")
def healthz():
    """The process answers (it may still be loading models)."""
    return jsonify(status="ok", pid=os.getpid())


@bp.get("/readyz")
def readyz():
    """200 once models and index are loaded; 503 while loading or after a failed load."""
    s = service()
    body = {"state": s.state, "pid": os.getpid()}
    if s.state == "ready":
        s.refresh()
        body |= {"index": str(s.index_dir), "counts": s.shop.index.counts(), "loaded_in_s": s.loaded_in_s,
                 "models": s.signature}
        return jsonify(body)
    body["error"] = s.error
    resp = jsonify(body)
    resp.status_code = 503
    resp.headers["Retry-After"] = "2"
    return resp


@bp.get("/metrics")
def prometheus():
    s = service()
    data, ctype = metrics.render(s.shop.index.counts() if s.state == "ready" else None)
    return Response(data, content_type=ctype)


@bp.get("/openapi.json")
def openapi():
    return jsonify(json.loads(OPENAPI.read_text()))
