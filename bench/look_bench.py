"""Per-stage latency of a look (p50/p95 ms), for the default pipeline (reid recall, reid-local
rerank), for the previous default (a global reid rerank at 256 px: a second forward a crop) and
for the official architectures (FashionCLIP ViT-B/32 recall, DINOv2 ViT-S/14 rerank, SAM vit_b masks) with
random weights (they time the same as trained ones). Ratios are against the default pipeline
measured in the same run.

    python bench/look_bench.py [--repeats 3] [--skip-official]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.catalog import index_folder  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.dataset import DEFAULT_DATA  # noqa: E402
from pipeline.images import load_image  # noqa: E402
from pipeline.look import ShopTheLook  # noqa: E402

PHOTOS = ["coco_000000000785.jpg", "coco_000000197388.jpg", "crowdpose_103319.jpg", "ochuman_000817.jpg",
          "ochuman_003799.jpg"]


def official_config(tmp: Path) -> dict:
    import open_clip
    import timm
    from segment_anything import sam_model_registry

    torch.save(open_clip.create_model("ViT-B-32").state_dict(), tmp / "clip.bin")
    state = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0).state_dict()
    torch.save(state, tmp / "dinov2.pth")
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), tmp / "sam.pth")
    return load_config(
        embedder={"backend": "fashion-clip", "weights": str(tmp / "clip.bin"), "arch": "ViT-B-32"},
        reranker={"backend": "dinov2", "weights": str(tmp / "dinov2.pth"), "arch": "vit_small_patch14_dinov2",
                  "image_size": 224},
        masks={"backend": "sam", "weights": str(tmp / "sam.pth"), "arch": "vit_b"},
    )


def run(name: str, cfg: dict, tmp: Path, repeats: int) -> dict[str, np.ndarray]:
    index = tmp / f"index-{name}"
    index_folder(DEFAULT_DATA / "clothing-dataset-small" / "test", index, cfg, limit_per_class=10)
    shop = ShopTheLook.from_config(index, cfg)
    photos = [load_image(DEFAULT_DATA / "people" / p) for p in PHOTOS]
    shop.look(photos[0])  # warm-up
    rows: dict[str, list[float]] = {}
    for _ in range(repeats):
        for img in photos:
            t = time.perf_counter()
            r = shop.look(img)
            total = 1000 * (time.perf_counter() - t)
            for k, v in {**r.timings_ms, "total": total}.items():
                rows.setdefault(k, []).append(v)
    return {k: np.array(v) for k, v in rows.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-official", action="store_true")
    args = ap.parse_args()
    device = "GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        from detectors.reid import build_reid  # noqa: PLC0415
        from pipeline.weights import resolve  # noqa: PLC0415

        cfg = load_config()
        size = build_reid(checkpoint=resolve(cfg["embedder"]["weights"]))[1]["image_size"]
        default = f"default (mediapipe, pose-regions, person mask, reid {size}px + {cfg['reranker']['backend']} rerank)"
        results = {default: run("default", cfg, tmp, args.repeats)}
        glob = load_config(reranker={"backend": "reid", "weights": cfg["embedder"]["weights"], "image_size": 256,
                                     "catalog_views": cfg["embedder"]["catalog_views"]})
        results[f"global rerank: reid {size}px + reid 256px (previous default)"] = run("global", glob, tmp, args.repeats)
        if not args.skip_official:
            cfg = official_config(tmp)
            results["official archs (ViT-B/32 + DINOv2 ViT-S/14 + SAM vit_b, random weights)"] = run(
                "official", cfg, tmp, args.repeats)
    base = results[next(iter(results))]["total"]
    print(f"\nlook latency per stage, ms ({device}; {len(PHOTOS)} full-body photos x {args.repeats})")
    for name, rows in results.items():
        print(f"\n{name}")
        print(f"  {'stage':14s} {'p50':>9s} {'p95':>9s}")
        for stage, v in rows.items():
            print(f"  {stage:14s} {np.percentile(v, 50):9.1f} {np.percentile(v, 95):9.1f}")
        print(f"  total p50 = {np.percentile(rows['total'], 50) / np.percentile(base, 50):.2f}x the default pipeline")


if __name__ == "__main__":
    main()
