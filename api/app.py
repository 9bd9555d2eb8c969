"""``create_app(test_config=None)``: the Flask application factory.

Configuration: pipeline defaults (pipeline/config.py), then the TOML file named by
``SHOPFLUENCE_CONFIG``, then ``test_config``; ``SHOPFLUENCE_INDEX`` and ``SHOPFLUENCE_API_KEYS``
(comma-separated) override the index folder and the write keys. Every error is JSON:
``{"error": {"status", "name", "message"}}``.
"""

from __future__ import annotations

import logging
import os
import time

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from api import metrics
from api.service import NotReady, Service
from pipeline.config import load_config, merge
from pipeline.images import ImageError

API_DEFAULTS = {
    "index": "demo-index",
    "keys": [],  # API keys allowed to write; none = writes refused
    "max_upload_mb": 20,
    "max_pixels": 50_000_000,
    "request_timeout_s": 30,
    "max_k": 50,
    "max_images_per_product": 8,
    "image_dir": None,  # where uploaded product photos are kept (default: <index>-images)
    "create_index": False,  # start with an empty index when none exists at `index`
}
IMAGE_ERROR_STATUS = {"type": 415, "too_large": 413, "too_small": 422, "empty": 400, "corrupt": 400, "unreadable": 400}
log = logging.getLogger("shopfluence.api")


def app_config(test_config: dict | None = None) -> dict:
    cfg = load_config(os.environ.get("SHOPFLUENCE_CONFIG"))
    cfg = merge({"api": API_DEFAULTS}, cfg)
    if os.environ.get("SHOPFLUENCE_INDEX"):
        cfg["api"]["index"] = os.environ["SHOPFLUENCE_INDEX"]
    if os.environ.get("SHOPFLUENCE_API_KEYS"):
        cfg["api"]["keys"] = [k.strip() for k in os.environ["SHOPFLUENCE_API_KEYS"].split(",") if k.strip()]
    return merge(cfg, test_config or {})


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app; models and index load in a background thread (``/readyz`` tells when)."""
    cfg = app_config(test_config)
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config["SHOPFLUENCE"] = cfg
    app.config["MAX_CONTENT_LENGTH"] = int(cfg["api"]["max_upload_mb"] * 1024 * 1024)
    app.config["MAX_FORM_MEMORY_SIZE"] = app.config["MAX_CONTENT_LENGTH"]
    app.json.sort_keys = False
    app.extensions["shopfluence"] = Service(cfg, background=cfg.get("load_in_background", True))

    from api.looks import bp as looks  # noqa: PLC0415
    from api.ops import bp as ops  # noqa: PLC0415
    from api.products import bp as products  # noqa: PLC0415
    from api.search import bp as search  # noqa: PLC0415

    for bp in (ops, looks, products, search):
        app.register_blueprint(bp)
    _errors(app)
    _instrument(app)
    return app


def error(status: int, message: str, name: str | None = None):
    from werkzeug.http import HTTP_STATUS_CODES  # noqa: PLC0415

    body = {"error": {"status": status, "name": name or HTTP_STATUS_CODES.get(status, "Error"), "message": message}}
    return jsonify(body), status


def _errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        resp = error(e.code or 500, e.description or e.name, e.name)
        return resp

    @app.errorhandler(ImageError)
    def image_error(e: ImageError):
        return error(IMAGE_ERROR_STATUS.get(e.kind, 400), str(e))

    @app.errorhandler(NotReady)
    def not_ready(e: NotReady):
        body, status = error(503, str(e))
        body.headers["Retry-After"] = "2"
        return body, status

    @app.errorhandler(TimeoutError)
    def timeout(e):
        return error(504, f"the request took longer than {app.config['SHOPFLUENCE']['api']['request_timeout_s']} s")

    @app.errorhandler(Exception)
    def unexpected(e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal error; it has been logged")


def _instrument(app: Flask) -> None:
    @app.before_request
    def start():
        g.t0 = time.perf_counter()

    @app.after_request
    def done(resp):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.perf_counter() - g.get("t0", time.perf_counter())
        metrics.observe_request(request.method, endpoint, resp.status_code, elapsed)
        return resp
