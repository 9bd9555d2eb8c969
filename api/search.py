"""POST /v1/search/text: garments described in words (needs a text tower: FashionCLIP)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from werkzeug.exceptions import NotImplemented as NotImplementedHTTP
from werkzeug.exceptions import UnprocessableEntity

from api import inputs
from api.encode import match_json
from api.looks import product_image_url
from api.ops import service
from pipeline.types import Match

bp = Blueprint("search", __name__, url_prefix="/v1/search")


@bp.post("/text")
def text():
    """JSON {"text", "category", "k", brand/price filters}: the recall embedder's text tower only."""
    s = service()
    shop = s.ready()
    data = inputs.body()
    query = data.get("text")
    if not isinstance(query, str) or not query.strip() or len(query) > 500:
        raise UnprocessableEntity("`text` must be a non-empty string of at most 500 characters")
    if not hasattr(shop.embedder, "embed_text"):
        raise NotImplementedHTTP(f"text search needs an embedder with a text tower (fashion-clip); this "
                                 f"server's recall embedder is {shop.embedder.name!r}, which has none")
    opts = inputs.search_options(data)
    category = opts["category"] or "upper"
    vec = s.run(shop.embedder.embed_text, [query])[0]
    cands = shop.index.search(category, vec, opts["k"] or shop.search["k"], filters=opts["filters"])
    meta = shop.index.store.get([c.product_id for c in cands])
    matches = [Match(c.product_id, c.score, c.recall_score, None, meta.get(c.product_id, {})) for c in cands]
    return jsonify(text=query, category=category, matches=[match_json(m, product_image_url) for m in matches])
