"""Catalog rows: reading a retailer's CSV or JSONL file, and checking each product's fields.

A row is ``{product_id, images, title, brand, price, url, category, label}``; ``images`` is a
list of paths (relative to the catalog file) or http(s) URLs, written in a CSV cell as
``a.jpg|b.jpg`` or as a JSON list. Only ``product_id`` and ``images`` are required. The same
checks serve the batch ingest, ``shopfluence catalog add`` and ``POST /v1/products``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.types import CATEGORIES

PRODUCT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
TEXT_LIMITS = {"title": 300, "brand": 100, "url": 2000, "label": 100}
TRUE = {"1", "true", "yes", "y", "hot", "t"}
MAX_IMAGES = 16


class RowError(ValueError):
    """A catalog row that cannot be ingested; the message says what to fix."""


@dataclass(frozen=True)
class Row:
    """One line of the catalog file: its 1-based line (or record) number and its raw fields."""

    line: int
    fields: dict | None  # None when the line itself could not be parsed
    error: str | None = None


def read_catalog(path: str | Path) -> list[Row]:
    """Every row of a ``.csv`` or ``.jsonl``/``.ndjson`` file, unparseable lines included as errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog file {path} does not exist")
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        if suffix == ".csv":
            reader = csv.DictReader(f)
            if not reader.fieldnames or "product_id" not in [n.strip() for n in reader.fieldnames]:
                raise ValueError(f"{path}: the first line must name the columns, product_id and images at least")
            return [Row(reader.line_num, {(k or "").strip(): v for k, v in r.items()}) for r in reader]
        if suffix in (".jsonl", ".ndjson", ".json"):
            rows = []
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    rows.append(Row(n, None, f"not valid JSON ({e.msg} at column {e.colno})"))
                    continue
                rows.append(Row(n, value, None) if isinstance(value, dict) else Row(n, None, "not a JSON object"))
            return rows
    raise ValueError(f"{path}: a catalog is a .csv or .jsonl file (one product a row)")


def clean_product(raw: dict) -> dict:
    """The product record of a row's metadata: checked id, texts, price, category.

    Raises:
        RowError: the first problem found.
    """
    pid = raw.get("product_id")
    pid = pid.strip() if isinstance(pid, str) else pid
    if not isinstance(pid, str) or not PRODUCT_ID.match(pid):
        raise RowError("product_id must be 1-128 characters: letters, digits and . _ : - (starting with a "
                       f"letter or digit), got {pid!r}")
    out = {"product_id": pid}
    for name, limit in TEXT_LIMITS.items():
        v = raw.get(name)
        if v in (None, ""):
            continue
        if not isinstance(v, str) or len(v) > limit:
            raise RowError(f"{name} must be a string of at most {limit} characters")
        out[name] = v.strip()
    price = raw.get("price")
    if price not in (None, ""):
        try:
            out["price"] = float(price)
        except (TypeError, ValueError):
            raise RowError(f"price must be a number, got {price!r}") from None
        if not 0 <= out["price"] < 1e9:
            raise RowError("price must be between 0 and 1e9")
    category = raw.get("category")
    if category not in (None, ""):
        category = str(category).strip().lower()
        if category not in CATEGORIES:
            raise RowError(f"category must be one of {', '.join(CATEGORIES)} (or empty to detect it), got {category!r}")
        out["category"] = category
    return out


def image_refs(raw: dict, base: Path | None = None) -> list[str]:
    """The row's photos: local paths made absolute against ``base``, or http(s) URLs."""
    value = raw.get("images", raw.get("image"))
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else re.split(r"[|\n]", text)
    if not isinstance(value, list):
        raise RowError("images must be a list of paths or URLs")
    refs = [str(v).strip() for v in value if str(v).strip()]
    if not refs:
        raise RowError("the row has no image: give at least one path or URL in `images`")
    if len(refs) > MAX_IMAGES:
        raise RowError(f"at most {MAX_IMAGES} images a product, got {len(refs)}")
    out = []
    for ref in refs:
        scheme = ref.split("://", 1)[0].lower() if "://" in ref else ""
        if scheme in ("http", "https"):
            out.append(ref)
        elif scheme in ("", "file"):
            p = Path(ref.removeprefix("file://")).expanduser()
            out.append(str(p if p.is_absolute() or base is None else (base / p).resolve()))
        else:
            raise RowError(f"unsupported image address {ref[:80]!r}: use a local path or an http(s) URL")
    return out


def is_hot(raw: dict, column: str | None, ids: set[str] | None) -> bool:
    """Whether a row is in the hot inventory (a truthy ``column`` or an id in ``ids``)."""
    if column is not None and str(raw.get(column, "")).strip().lower() in TRUE:
        return True
    return ids is not None and str(raw.get("product_id", "")).strip() in ids


def plan(rows: list[Row], base: Path | None, *, hot_column: str | None = None,
         hot_ids: set[str] | None = None) -> tuple[list[dict], list[dict], int]:
    """Checked products to ingest, in file order, plus the rejects found by reading alone.

    A product is ``{line, record, images, category}``. A repeated product_id keeps the first row
    and rejects the others. With ``hot_column``/``hot_ids`` only hot rows are kept (the third
    value counts the rows left out as not hot).
    """
    products, rejects, seen, cold = [], [], {}, 0
    for row in rows:
        if row.fields is None:
            rejects.append(reject(row.line, None, row.error))
            continue
        if (hot_column or hot_ids is not None) and not is_hot(row.fields, hot_column, hot_ids):
            cold += 1
            continue
        try:
            record = clean_product(row.fields)
            refs = image_refs(row.fields, base)
        except (RowError, json.JSONDecodeError) as e:
            rejects.append(reject(row.line, row.fields.get("product_id"), str(e)))
            continue
        if record["product_id"] in seen:
            rejects.append(reject(row.line, record["product_id"],
                                  f"duplicate product_id: already on line {seen[record['product_id']]}"))
            continue
        seen[record["product_id"]] = row.line
        products.append({"line": row.line, "record": record, "images": refs, "category": record.get("category")})
    return products, rejects, cold


def reject(line: int | None, product_id, reason: str, image: str | None = None) -> dict:
    """One line of the rejects file; ``image`` set when one photo failed but the product did not."""
    out = {"line": line, "product_id": product_id if isinstance(product_id, str) else None, "reason": reason}
    if image is not None:
        out["image"] = image
    return out


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
