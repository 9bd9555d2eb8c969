"""POST /v1/looks: a photo in, its garments and their catalog matches out."""

from __future__ import annotations

from flask import Blueprint, jsonify, url_for
from werkzeug.exceptions import NotFound

from api import inputs, metrics
from api.encode import look_json
from api.ops import service

bp = Blueprint("looks", __name__, url_prefix="/v1")


def product_image_url(product_id: str) -> str:
    return url_for("products.image", product_id=product_id)


@bp.post("/looks")
def create_look():
    """Multipart ``image`` or JSON ``{"image": base64}``; options in the query, form or JSON:
    k, categories, brand, price_min, price_max, box (x0,y0,x1,y1), garment, category."""
    s = service()
    shop = s.ready()
    data = inputs.body()
    opts = inputs.search_options(data)
    image = inputs.images(data)[0]
    kw = {"k": opts["k"], "filters": opts["filters"], "category": opts["category"], "box": opts.get("box")}
    if "categories" in opts:
        kw["categories"] = opts["categories"]
    result = s.run(shop.look, image, **kw)
    metrics.observe_stages(result.timings_ms)
    only = opts["garment"]
    if only is not None and only >= len(result.garments):
        raise NotFound(f"garment {only} does not exist: this photo has {len(result.garments)} garment(s)")
    return jsonify({"query": _echo(opts)} | look_json(result, product_image_url, only))


def _echo(opts: dict) -> dict:
    """The options the request set (unset ones and an all-empty filter left out)."""
    filters = {k: v for k, v in opts["filters"].items() if v is not None}
    echo = {k: v for k, v in opts.items() if k != "filters" and v is not None}
    return echo | ({"filters": filters} if filters else {})
