"""POST /v1/looks: a photo in, its garments and their catalog matches out."""

from __future__ import annotations

from flask import Blueprint, jsonify, url_for
from werkzeug.exceptions import NotFound

from api import inputs, metrics
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
    return jsonify(inputs_echo(opts) | _look(result, only))


def _look(result, only):
    from api.encode import look_json  # noqa: PLC0415

    return look_json(result, product_image_url, only)


def inputs_echo(opts: dict) -> dict:
    return {"query": {k: v for k, v in opts.items() if v not in (None, {}, []) and
                      not (k == "filters" and not any(opts["filters"].values()))}}
