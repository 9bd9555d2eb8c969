"""Products: on-demand add (POST), read, delete, "more like this" and the product photo.

Writes need an API key (``X-API-Key: <key>`` or ``Authorization: Bearer <key>``), compared in
constant time with each configured key; with no key configured, writes are refused.
"""

from __future__ import annotations

import functools
import hmac
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request, send_file
from werkzeug.exceptions import Forbidden, NotFound, Unauthorized, UnprocessableEntity

from api import inputs
from api.encode import match_json
from api.looks import product_image_url
from api.ops import service
from pipeline.images import ImageError, sniff_format
from pipeline.rows import PRODUCT_ID, RowError, clean_product

bp = Blueprint("products", __name__, url_prefix="/v1/products")


def require_key(view):
    @functools.wraps(view)
    def checked(*args, **kwargs):
        keys = current_app.config["SHOPFLUENCE"]["api"]["keys"]
        if not keys:
            raise Forbidden("catalog writes are disabled on this server: no API key is configured "
                            "(set SHOPFLUENCE_API_KEYS)")
        given = request.headers.get("X-API-Key") or ""
        auth = request.headers.get("Authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise Unauthorized("this endpoint needs an API key: send the header X-API-Key")
        ok = False
        for key in keys:  # every key is compared, so the time does not tell which one was close
            ok |= hmac.compare_digest(given.encode(), str(key).encode())
        if not ok:
            raise Forbidden("the API key is not valid")
        return view(*args, **kwargs)

    return checked


def _product(product_id: str) -> dict:
    shop = service().ready()
    found = shop.index.store.get([product_id]) if PRODUCT_ID.match(product_id) else {}
    if product_id not in found:
        raise NotFound(f"no product {product_id!r}")
    return found[product_id]


@bp.post("")
@require_key
def add():
    """Multipart (``image`` files + fields) or JSON (``images`` base64 + fields): detect, embed, index.

    Fields: product_id (required), title, brand, price, url, category (else our class head decides).
    The product is searchable as soon as this returns (201).
    """
    s = service()
    s.ready()
    data = inputs.body()
    try:  # the checks a catalog row gets (pipeline/rows.py)
        product = clean_product({k: data.get(k) for k in ("product_id", "title", "brand", "price", "url", "category")})
    except RowError as e:
        raise UnprocessableEntity(str(e)) from None
    category = product.pop("category", None)
    photos = inputs.images(data, current_app.config["SHOPFLUENCE"]["api"]["max_images_per_product"])
    try:
        record = s.add_product(product, photos, category)
    except ImageError:
        raise  # its own status (a box or photo too small ...)
    except ValueError as e:  # no garment of that category in the photos
        raise UnprocessableEntity(str(e)) from e
    record = {k: v for k, v in record.items() if k not in ("image", "images")}
    return jsonify(product=record | {"image": product_image_url(record["product_id"])}), 201


@bp.get("/<product_id>")
def get(product_id: str):
    p = _product(product_id)
    return jsonify(product={k: p.get(k) for k in ("product_id", "title", "url", "brand", "price", "category", "label")}
                   | {"image": product_image_url(product_id)})


@bp.delete("/<product_id>")
@require_key
def delete(product_id: str):
    _product(product_id)
    service().delete_product(product_id)
    return jsonify(deleted=product_id)


@bp.get("/<product_id>/similar")
def similar(product_id: str):
    """"More like this": nearest products of the same category (k, brand, price_min, price_max)."""
    s = service()
    shop = s.ready()
    _product(product_id)
    opts = inputs.search_options({})
    try:
        category, matches = s.run(shop.similar, product_id, opts["k"], opts["filters"])
    except KeyError:
        raise NotFound(f"product {product_id!r} is in the catalog but not indexed") from None
    return jsonify(product_id=product_id, category=category, matches=[match_json(m, product_image_url) for m in matches])


@bp.get("/<product_id>/image")
def image(product_id: str):
    """The product's photo, as stored (uploads are re-encoded without metadata)."""
    path = _product(product_id).get("image")
    if not path or not Path(path).is_file():
        raise NotFound(f"product {product_id!r} has no stored photo")
    with open(path, "rb") as f:
        fmt = sniff_format(f.read(16))
    return send_file(path, mimetype=f"image/{fmt.lower()}", max_age=3600)
