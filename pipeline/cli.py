"""``shopfluence`` command line: look, index, catalog, reindex, train, eval, weights."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pipeline.weights import MissingWeights

DEFAULT_INDEX = "demo-index"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shopfluence", description="Shop the look: find each garment of a photo in a catalog.")
    parser.add_argument("--config", help="TOML file merged over the defaults (pipeline/config.py)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("look", help="find the garments of a photo and their catalog matches")
    p.add_argument("photo")
    p.add_argument("--index", default=DEFAULT_INDEX)
    p.add_argument("-k", type=int, default=None)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_look)

    p = sub.add_parser("index", help="build the index from a folder of catalog photos (folder per class)")
    p.add_argument("folder")
    p.add_argument("--out", default=DEFAULT_INDEX)
    p.add_argument("--per-class", type=int, default=0, help="index at most N photos of each class")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("catalog", help="ingest a catalog file, or add one product (the on-demand path)")
    csub = p.add_subparsers(dest="catalog_command", required=True)
    c = csub.add_parser("ingest", help="tag and index every row of a CSV or JSONL catalog (resumable)")
    c.add_argument("catalog", help=".csv or .jsonl: product_id, images, title, brand, price, url, category")
    c.add_argument("--index", default=DEFAULT_INDEX)
    c.add_argument("--work", help="chunks and reports (tags.jsonl, rejects.jsonl, near_duplicates.jsonl); "
                                  "default <index>.ingest")
    c.add_argument("--engine", choices=["local", "ray"], default="local")
    c.add_argument("--workers", type=int, default=1, help="processes (local) or actors (ray)")
    c.add_argument("--chunk-size", type=int, default=64)
    c.add_argument("--threads", type=int, default=4, help="photo-decoding threads a worker")
    c.add_argument("--ray-address", help="a Ray cluster (default: start a local Ray)")
    c.add_argument("--hot", metavar="COLUMN", help="ingest only rows whose COLUMN is true/1/yes")
    c.add_argument("--hot-ids", metavar="FILE", help="ingest only the product ids listed in FILE, one a line")
    c.add_argument("--restart", action="store_true", help="process every row again, even if done before")
    c.add_argument("--new-index", action="store_true", help="replace the index instead of adding to it")
    c.add_argument("--dup-distance", type=int, default=4, help="hash bits for near-duplicate photos (0-7)")
    c.set_defaults(func=cmd_catalog_ingest)
    c = csub.add_parser("add", help="detect, embed and index one product now (same path as POST /v1/products)")
    c.add_argument("product", help="a JSON file, or inline JSON: {product_id, images, title, brand, price, url, category}")
    c.add_argument("--index", default=DEFAULT_INDEX)
    c.set_defaults(func=cmd_catalog_add)

    p = sub.add_parser("reindex", help="compact removed products and retrain quantizers that are due")
    p.add_argument("index", nargs="?", default=DEFAULT_INDEX)
    p.add_argument("--force", action="store_true", help="retrain every category now")
    p.add_argument("--factory", help="faiss factory string instead of the config's (auto: by size)")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("train", help="train our re-identification model (see pipeline/train.py)")
    p.add_argument("--train-config", help="TOML with TrainConfig fields")
    for name, typ in (("data", str), ("out", str), ("epochs", int), ("batch-size", int), ("lr", float),
                      ("image-size", int), ("device", str), ("workers", int), ("subset", int),
                      ("max-steps", int), ("seed", int), ("backbone", str), ("longer-side", int),
                      ("embed-dim", int), ("val-every", int), ("max-minutes", float), ("init", str)):
        p.add_argument(f"--{name}", type=typ)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pack", help="copy clothing-dataset-small (+ no-person) at training size, e.g. to carry to a GPU machine")
    p.add_argument("out", help="new data folder; use it with SHOPFLUENCE_DATA=OUT or --data OUT/clothing-dataset-small")
    p.add_argument("--data", default=None, help="source data folder (default ../shared/data)")
    p.add_argument("--size", type=int, default=256, help="longer side in pixels")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("eval", help="held-out retrieval evaluation, report to a folder")
    p.add_argument("--out", default="reports/eval")
    p.add_argument("--data", default=None, help="clothing-dataset-small folder")
    p.add_argument("--weights", default="reid-v2", help="manifest slot or file of our model")
    p.add_argument("--baselines", default="histogram,random", help="comma list: histogram, random, fashion-clip, dinov2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="evaluate on the first N test photos only")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (embedding speed is measured on it)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("weights", help="list, check, fetch or release checkpoints (weights/manifest.toml)")
    p.add_argument("action", choices=["list", "check", "fetch", "release"])
    p.add_argument("name", nargs="?", help="slot name (fetch) or training run folder (release)")
    p.add_argument("--url", help="fetch from this URL instead of the manifest's")
    p.set_defaults(func=cmd_weights)

    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except MissingWeights as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _config(args):
    from pipeline.config import load_config  # noqa: PLC0415

    return load_config(args.config)


def cmd_look(args) -> int:
    from pipeline.images import load_image  # noqa: PLC0415
    from pipeline.look import ShopTheLook  # noqa: PLC0415

    image = load_image(args.photo)
    result = ShopTheLook.from_config(args.index, _config(args)).look(image, k=args.k)
    if args.json:
        print(json.dumps(result_to_dict(result), indent=2))
        return 0
    print(f"{args.photo}: {image.shape[1]}x{image.shape[0]}  pose: {result.pose.reason}")
    for i, (g, matches) in enumerate(result.items(), 1):
        box = ", ".join(f"{v:.0f}" for v in g.box)
        area = f"{g.mask.mean():.1%} of photo" if g.mask is not None else "no mask"
        print(f"\n[{i}] {g.category} ({g.label}, score {g.score:.2f})  box [{box}]  mask {area}")
        for m in matches:
            rr = f"{m.rerank_score:.3f}" if m.rerank_score is not None else "-"
            print(f"    {m.score:.3f}  recall {m.recall_score:.3f}  rerank {rr}  {m.product_id}  {m.product.get('image', '')}")
    print("\ntimings (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings_ms.items()))
    return 0


def result_to_dict(result) -> dict:
    return {
        "pose": {"person": result.pose.person, "full_body": result.pose.full_body,
                 "frontal": result.pose.frontal, "reason": result.pose.reason},
        "garments": [
            {"category": g.category, "label": g.label, "score": g.score, "box": [round(v, 1) for v in g.box],
             "mask_pixels": int(g.mask.sum()) if g.mask is not None else None,
             "matches": [{"product_id": m.product_id, "score": m.score, "recall_score": m.recall_score,
                          "rerank_score": m.rerank_score, "image": m.product.get("image"),
                          "title": m.product.get("title")} for m in matches]}
            for g, matches in result.items()
        ],
        "timings_ms": result.timings_ms,
    }


def cmd_index(args) -> int:
    from pipeline.catalog import index_folder  # noqa: PLC0415

    report = index_folder(args.folder, args.out, _config(args), limit_per_class=args.per_class)
    print(f"indexed {sum(report.added.values())} products into {args.out}: "
          + ", ".join(f"{c} {n}" for c, n in report.added.items())
          + f"; skipped {len(report.skipped)}")
    return 0


def cmd_catalog_ingest(args) -> int:
    from pipeline.ingest import IngestOptions, ingest  # noqa: PLC0415

    if not 0 <= args.dup_distance <= 7:
        raise ValueError("--dup-distance must be between 0 and 7")
    hot_ids = None
    if args.hot_ids:
        hot_ids = {line.strip() for line in Path(args.hot_ids).read_text().splitlines() if line.strip()}
    opts = IngestOptions(engine=args.engine, workers=args.workers, chunk_size=args.chunk_size, threads=args.threads,
                         ray_address=args.ray_address, restart=args.restart, new_index=args.new_index,
                         dup_distance=args.dup_distance)
    r = ingest(args.catalog, args.index, _config(args), opts, hot_column=args.hot, hot_ids=hot_ids, work=args.work)
    print(f"{r.rows} rows: indexed {sum(r.indexed.values())} products into {r.index} ("
          + ", ".join(f"{c} {n}" for c, n in r.indexed.items()) + f"), rejected {r.rejected} rows"
          + (f" and {r.rejected_images} photos" if r.rejected_images else "")
          + (f", {r.not_hot} rows not hot" if r.not_hot else "")
          + f"; {r.near_duplicate_groups} near-duplicate groups; {r.seconds:.1f} s")
    print(f"reports: {r.work}/tags.jsonl, {r.work}/rejects.jsonl, {r.work}/near_duplicates.jsonl")
    return 0


def cmd_catalog_add(args) -> int:
    from api.app import API_DEFAULTS  # noqa: PLC0415
    from api.service import Service  # noqa: PLC0415
    from pipeline.config import merge  # noqa: PLC0415
    from pipeline.ingest import IngestOptions, load_photo  # noqa: PLC0415
    from pipeline.rows import clean_product, image_refs  # noqa: PLC0415

    text = args.product.strip()
    base = None
    if not text.startswith("{"):
        base = Path(text).resolve().parent
        text = Path(text).read_text()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"the product is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError("the product must be a JSON object")
    product = clean_product(raw)
    photos = [load_photo(ref, IngestOptions()) for ref in image_refs(raw, base or Path.cwd())]
    category = product.pop("category", None)
    cfg = merge({"api": {**API_DEFAULTS, "index": args.index, "create_index": True}}, _config(args))
    record = Service(cfg, background=False).add_product(product, photos, category)
    print(json.dumps({k: v for k, v in record.items() if k != "images"}, indent=2))
    return 0


def cmd_reindex(args) -> int:
    from indexes.category import gpu_wanted  # noqa: PLC0415
    from indexes.index_set import IndexSet  # noqa: PLC0415

    icfg = _config(args)["index"]
    index = IndexSet.load(Path(args.index), mmap=False)
    index.flat_limit = icfg["flat_limit"]
    done = index.maintain(force=args.force, growth=icfg["retrain_growth"], factory=args.factory or icfg["factory"],
                          gpu=gpu_wanted(icfg))
    index.save(Path(args.index))
    for category, what in done.items():
        print(f"{category:9s} {what}")
    return 0


def cmd_train(args) -> int:
    from pipeline.train import TrainConfig, train  # noqa: PLC0415

    keys = ("data", "out", "epochs", "batch_size", "lr", "image_size", "device", "workers", "subset",
            "max_steps", "seed", "backbone", "longer_side", "embed_dim", "val_every", "max_minutes", "init")
    cfg = TrainConfig.load(args.train_config, **{k: getattr(args, k) for k in keys})
    print(f"release written to {train(cfg)}")
    return 0


def cmd_pack(args) -> int:
    from pipeline.dataset import pack_photos  # noqa: PLC0415

    n, size, skipped = pack_photos(Path(args.out), args.data, args.size, args.quality)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    print(f"packed {n} photos into {args.out} ({size / 1e6:.1f} MB); {len(skipped)} skipped")
    return 0


def cmd_eval(args) -> int:
    from pipeline.evaluate import run_eval  # noqa: PLC0415

    table = run_eval(out=Path(args.out), data=args.data, weights=args.weights,
                     baselines=[b for b in args.baselines.split(",") if b], seed=args.seed, limit=args.limit,
                     device=args.device)
    print(table)
    return 0


def cmd_weights(args) -> int:
    from pipeline import weights  # noqa: PLC0415

    if args.action in ("list", "check"):
        for name, s in weights.load_manifest().items():
            state = weights.check(name) if args.action == "check" else ("present" if s.present else "missing")
            print(f"{name:15s} {state:32s} {s.file or '(bundled)'}  [{s.license}]")
            if args.action == "list" and not s.present:
                print(f"{'':15s} get it: {s.how_to_get()}")
        return 1 if args.action == "check" and any(
            weights.check(n) == "CHECKSUM MISMATCH" for n in weights.load_manifest()) else 0
    if args.action == "fetch":
        if not args.name:
            raise ValueError("say which slot to fetch, e.g. `shopfluence weights fetch sam-vit-b`")
        print(f"saved {weights.fetch(args.name, args.url)}")
        return 0
    run = Path(args.name or "runs/reid-v2")
    src = run / "release.pt"
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist: train first with `shopfluence train --out {run}`")
    dst = weights.slot("reid-v2").path
    shutil.copyfile(src, dst)
    digest = weights.sha256_of(dst)
    weights.set_sha256("reid-v2", digest)
    print(f"released {src} -> {dst} (sha256 {digest}, {dst.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
