"""Reading a request: photos (multipart or base64 JSON) and search options, validated.

Malformed options are 422, a missing photo 400, a body that is neither multipart nor JSON 415.
"""

from __future__ import annotations

import base64
import binascii
import math

from flask import current_app, request
from werkzeug.exceptions import BadRequest, UnprocessableEntity, UnsupportedMediaType

from pipeline.images import load_image
from pipeline.types import CATEGORIES


def _cfg() -> dict:
    return current_app.config["SHOPFLUENCE"]["api"]


def body() -> dict:
    """The JSON object of a JSON request, the form fields of a multipart one."""
    ctype = request.mimetype
    if ctype == "application/json":
        try:
            data = request.get_json(silent=True)
        except RecursionError:  # nesting deeper than the parser's stack (a hostile body)
            raise BadRequest("the JSON body is nested too deeply") from None
        if not isinstance(data, dict):
            raise BadRequest("the body is not a JSON object")
        return data
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return request.form.to_dict()
    if not request.content_length and not request.data:
        return {}
    raise UnsupportedMediaType(f"send multipart/form-data or application/json, not {ctype or 'no content type'}")


def images(data: dict, max_images: int = 1) -> list:
    """Decoded RGB photos from multipart ``image`` files or JSON ``image``/``images`` base64 strings."""
    raw: list[bytes] = []
    if request.mimetype == "multipart/form-data":
        raw = [f.read() for f in request.files.getlist("image")]
    else:
        items = data.get("images", [data["image"]] if "image" in data else [])
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise UnprocessableEntity("`image`/`images` must be base64 strings")
        for item in items:
            text = item.split(",", 1)[1] if item.startswith("data:") else item
            try:
                raw.append(base64.b64decode(text, validate=True))
            except (binascii.Error, ValueError) as e:
                raise UnprocessableEntity(f"an image is not valid base64: {e}") from e
    if not raw:
        raise BadRequest("no photo: send it as multipart field `image` or JSON `image` (base64)")
    if len(raw) > max_images:
        raise UnprocessableEntity(f"at most {max_images} photo(s) per request, got {len(raw)}")
    return [load_image(b, max_pixels=_cfg()["max_pixels"]) for b in raw]


def _get(data: dict, name: str):
    v = request.args.get(name)
    return data.get(name) if v is None else v


def _number(data, name, kind=float, lo=None, hi=None):
    v = _get(data, name)
    if v is None or v == "":
        return None
    try:
        x = kind(v)
    except (TypeError, ValueError):
        raise UnprocessableEntity(f"`{name}` must be a {'whole ' if kind is int else ''}number, got {v!r}") from None
    if isinstance(x, float) and not math.isfinite(x):
        raise UnprocessableEntity(f"`{name}` must be finite")
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise UnprocessableEntity(f"`{name}` must be between {lo} and {hi}, got {v!r}")
    return x


def category(data: dict, name: str = "category") -> str | None:
    v = _get(data, name)
    if v in (None, ""):
        return None
    if v not in CATEGORIES:
        raise UnprocessableEntity(f"`{name}` must be one of {', '.join(CATEGORIES)}, got {v!r}")
    return v


def search_options(data: dict) -> dict:
    """k, categories, filters, box, garment, category, all checked."""
    opts = {"k": _number(data, "k", int, 1, _cfg()["max_k"])}
    cats = _get(data, "categories")
    if cats not in (None, ""):
        cats = cats.split(",") if isinstance(cats, str) else cats
        if not isinstance(cats, list) or not set(cats) <= set(CATEGORIES):
            raise UnprocessableEntity(f"`categories` must be a subset of {', '.join(CATEGORIES)}")
        opts["categories"] = cats
    brand = _get(data, "brand")
    if brand is not None and not isinstance(brand, (str, list)):
        raise UnprocessableEntity("`brand` must be a string")
    opts["filters"] = {"brand": brand or None, "price_min": _number(data, "price_min", float, 0),
                       "price_max": _number(data, "price_max", float, 0)}
    box = _get(data, "box")
    if box not in (None, ""):
        parts = box.split(",") if isinstance(box, str) else box
        try:
            box = [float(v) for v in parts]
        except (TypeError, ValueError):
            box = None
        if box is None or len(box) != 4 or not all(math.isfinite(v) for v in box):
            raise UnprocessableEntity("`box` must be four numbers x0,y0,x1,y1 in pixels of the uploaded photo")
        opts["box"] = box
    opts["garment"] = _number(data, "garment", int, 0, 100)
    opts["category"] = category(data)
    return opts
