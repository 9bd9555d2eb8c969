"""Garment localisation on the 954 Clothing Co-Parsing street photos: box IoU per category.

Protocol: per photo and category (upper, lower, footwear, dress), the union of the ground-truth
boxes of that category (CCP annotates each shoe, and a jacket and the top under it, apart) is
compared with the union of the predicted boxes of that category. Reported per category: mean
IoU over the photos that have the category, hit rate at IoU >= 0.5, and false positives
(predicted where the photo has none). Baseline in the same run: fixed proportions of the photo.

    python bench/ccp_localisation.py [--limit N] [--detector pose-regions]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.garments import CLASS_MAPS
from pipeline.config import load_config
from pipeline.dataset import DEFAULT_DATA
from pipeline.images import load_image
from pipeline.look import build_models
from pipeline.metrics import box_iou
from pipeline.types import CATEGORIES


def union(boxes):
    b = np.asarray(boxes, np.float32)
    return (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())


def fixed_proportions(w, h):
    return {"upper": (0.25 * w, 0.15 * h, 0.75 * w, 0.5 * h), "lower": (0.3 * w, 0.45 * h, 0.7 * w, 0.88 * h),
            "footwear": (0.3 * w, 0.86 * h, 0.7 * w, 0.98 * h)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DEFAULT_DATA / "ccp"))
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    root = Path(args.data)
    coco = json.loads((root / "ccp_boxes_coco.json").read_text())
    cat_names = {c["id"]: c["name"] for c in coco["categories"]}
    gt = defaultdict(lambda: defaultdict(list))
    for a in coco["annotations"]:
        cat = CLASS_MAPS["ccp"].get(cat_names[a["category_id"]])
        if cat:
            x, y, w, h = a["bbox"]
            gt[a["image_id"]][cat].append((x, y, x + w, y + h))
    images = coco["images"][: args.limit or None]

    cfg = load_config(args.config)
    models = build_models(cfg)
    pose, detector = models["pose"], models["detector"]
    scores = {name: {c: [] for c in CATEGORIES} for name in ("detector", "fixed proportions")}
    false_pos = {name: defaultdict(int) for name in scores}
    absent = defaultdict(int)
    seconds = []
    for im in tqdm(images, desc="ccp", unit="photo"):
        img = load_image(root / im["file_name"])
        h, w = img.shape[:2]
        t = time.perf_counter()
        g = detector.detect(img, pose.check(img))
        seconds.append(time.perf_counter() - t)
        preds = {"detector": defaultdict(list), "fixed proportions": defaultdict(list)}
        for box, cat in zip(g.boxes, g.categories):
            preds["detector"][cat].append(box)
        for cat, box in fixed_proportions(w, h).items():
            preds["fixed proportions"][cat].append(box)
        truth = gt[im["id"]]
        for cat in CATEGORIES:
            if not truth.get(cat):
                absent[cat] += 1
            for name, p in preds.items():
                if truth.get(cat):
                    scores[name][cat].append(box_iou(union(p[cat]), union(truth[cat])) if p.get(cat) else 0.0)
                elif p.get(cat):
                    false_pos[name][cat] += 1
    print(f"\n{len(images)} CCP photos; detector = {cfg['detector']['backend']} "
          f"(pose {cfg['pose']['backend']}), {1000 * np.median(seconds):.0f} ms median per photo on this machine\n")
    print(f"{'method':20s} {'category':9s} {'photos':>6s} {'mean IoU':>9s} {'IoU>=0.5':>9s} {'false pos':>10s}")
    for name in scores:
        for cat in CATEGORIES:
            s = np.array(scores[name][cat])
            if len(s):
                print(f"{name:20s} {cat:9s} {len(s):6d} {s.mean():9.3f} {(s >= 0.5).mean():9.3f} "
                      f"{false_pos[name][cat]:5d}/{absent[cat]}")
    d, f = scores["detector"], scores["fixed proportions"]
    all_d = np.concatenate([d[c] for c in CATEGORIES if d[c]])
    all_f = np.concatenate([f[c] for c in CATEGORIES if f[c]])
    print(f"\nmean IoU over all (photo, category) pairs: detector {all_d.mean():.3f}, fixed proportions "
          f"{all_f.mean():.3f} (ratio {all_d.mean() / max(all_f.mean(), 1e-9):.2f}x)")


if __name__ == "__main__":
    main()
