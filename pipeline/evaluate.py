"""Held-out retrieval evaluation (``shopfluence eval``, ``make eval``).

Protocol (also in the README):
- gallery: every photo of the test and validation splits of clothing-dataset-small (the
  validation photos are distractors); each photo is one product, embedded as the index embeds
  it (``Embedder.embed_catalog``: the configured catalog views), with a no-views row beside it.
- queries: ``per_photo`` re-photographs of each test photo made by ``EvalRephoto`` with a fixed
  seed (stronger crop, rotation, a cast shadow, a real photo from data/no-person as the new
  background, JPEG) -- transforms the training never used in that form; plus the same
  queries passed through the pipeline's own pose -> detect -> mask stages ("pipeline crops").
- two-stage rows, as the pipeline searches: recall top ``k_recall``, then the configured
  reranker (default ``reid-local``, :func:`indexes.category.part_similarity`) reorders them;
  beside it the previous default, a global rerank embedding at ``rerank_size`` px.
- metrics: recall@1/5/10, mAP@5, recall@1 per category, category accuracy of the class head
  on the clean test photos and on the queries; embeddings/s and queries/s measured in the run.
- baselines in the same run: a colour histogram, the untrained network (random init), and
  FashionCLIP / DINOv2 when their weight files are present.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detectors.reid import CLASS_CATEGORY, CLASSES
from indexes.category import part_similarity
from pipeline.augment import EvalRephoto
from pipeline.dataset import DEFAULT_DATA, clothing_split, load_small
from pipeline.metrics import map_at_k, recall_at_k
from pipeline.types import CATEGORIES

KS = (1, 2, 3, 5, 10)
GLOBAL_RERANK_WEIGHT = 0.5  # what the global 256 px rerank was tuned to (validation, flat from 0.5 to 0.7)


@torch.inference_mode()
def embed_tensors(model, tensors: list[torch.Tensor], device, batch: int = 128):
    """Embed normalised (3, S, S) tensors with a ReidNet: (embeddings (n, d), logits (n, C))."""
    embs, logits = [], []
    for i in range(0, len(tensors), batch):
        x = torch.stack(tensors[i:i + batch]).to(device)
        e, lg = model(x)
        embs.append(e.float().cpu().numpy())
        logits.append(lg.float().cpu().numpy())
    return np.concatenate(embs), np.concatenate(logits)


def histogram_embed(crops: list[np.ndarray], bins=(8, 8, 4)) -> np.ndarray:
    """Colour baseline: a joint HSV histogram, square-rooted (Hellinger) and L2-normalised."""
    import cv2  # noqa: PLC0415

    out = []
    for c in crops:
        hsv = cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2HSV)
        h = cv2.calcHist([hsv], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256]).ravel()
        h = np.sqrt(h / max(h.sum(), 1))
        out.append(h / max(np.linalg.norm(h), 1e-8))
    return np.asarray(out, np.float32)


@dataclass
class Method:
    name: str
    embed: callable  # list[np.ndarray] -> (n, d) float32 unit rows
    embed_gallery: callable | None = None  # the catalog side, when it differs (catalog views)


def make_queries(images: list[torch.Tensor], backgrounds: list[torch.Tensor], seed: int, per_photo: int,
                 size: int = 256) -> tuple[list[np.ndarray], np.ndarray]:
    """Re-photographs (uint8 HWC) of each image and the index of the image each comes from."""
    aug = EvalRephoto(size, backgrounds)
    g = torch.Generator().manual_seed(seed)
    queries, truth = [], []
    for i, im in enumerate(images):
        for _ in range(per_photo):
            q = aug(im, g)
            queries.append((q.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())
            truth.append(i)
    return queries, np.array(truth)


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def retrieval_metrics(gallery: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> tuple[dict, np.ndarray, float]:
    """Exact inner-product search (a matrix product: the gallery is small); returns metrics,
    the top-10 ranks and queries/s."""
    t = time.perf_counter()
    sims = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T
    top = np.argpartition(-sims, min(10, sims.shape[1] - 1), axis=1)[:, :10]
    ranks = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable"), 1)
    qps = len(queries) / max(time.perf_counter() - t, 1e-9)
    m = {f"recall@{k}": recall_at_k(ranks, truth, k) for k in KS}
    m["mAP@5"] = map_at_k(ranks, truth, 5)
    return m, ranks, qps


def run_eval(*, out: Path, data: str | None = None, weights: str = "reid-v2",
             baselines=("histogram", "random"), seed: int = 0, limit: int = 0, per_photo: int = 2,
             device: str = "cpu", rerank_size: int = 256) -> str:
    """Run the protocol and write ``report.md`` and PNG plots to ``out``; returns the table."""
    from detectors.embedders import build_embedder  # noqa: PLC0415
    from pipeline.config import load_config  # noqa: PLC0415
    from pipeline.weights import resolve, slot  # noqa: PLC0415

    cfg = load_config()
    search, rr_cfg = cfg["search"], cfg["reranker"]

    out.mkdir(parents=True, exist_ok=True)
    root = Path(data) if data else DEFAULT_DATA / "clothing-dataset-small"
    test, val = clothing_split("test", root), clothing_split("validation", root)
    if limit:
        test = test[:: max(1, len(test) // limit)][:limit]
    photos = test + val
    imgs = load_small(photos, 320, desc="decode gallery")
    bg_paths = sorted((root.parent / "no-person").glob("*.jpg"))
    backgrounds = [im.float() / 255 for im in load_small([_P(p) for p in bg_paths], 640, desc="backgrounds")]
    gallery_crops = [_hwc(im) for im in imgs]
    queries, truth = make_queries(imgs[:len(test)], backgrounds, seed, per_photo)
    q_cat = [CLASS_CATEGORY[photos[t].label] or "hat" for t in truth]

    ours_path = resolve(weights)
    views = tuple(cfg["embedder"].get("catalog_views", ()))
    ours = build_embedder("reid", checkpoint=ours_path, device=device, catalog_views=views)
    rr_kw = {k: v for k, v in rr_cfg.items() if k not in ("backend", "weights")}
    rr_path = ours_path if rr_cfg["backend"].startswith("reid") else resolve(rr_cfg.get("weights"))
    reranker = build_embedder(rr_cfg["backend"], checkpoint=rr_path, device=device, **rr_kw)
    ours_global = build_embedder("reid", checkpoint=ours_path, device=device, image_size=rerank_size,
                                 catalog_views=views)
    size = ours.preprocess.image_size
    shown = f", catalog views {'+'.join(f'{f:g}' for f in views)}" if views else ""
    methods = [Method(f"ours ({ours.config['backbone']}, {size}px{shown})", ours.embed, ours.embed_catalog)]
    if views:
        methods.append(Method(f"ours ({size}px), catalog photo alone (no views)", ours.embed))
    if "random" in baselines:
        rand = build_embedder("reid", checkpoint=None, device=device)
        methods.append(Method("untrained network (random init)", rand.embed))
    if "histogram" in baselines:
        methods.append(Method("colour histogram (HSV 8x8x4)", histogram_embed))
    for name, backend in (("fashion-clip", "fashion-clip"), ("dinov2", "dinov2")):
        slot_name = "dinov2-vits14" if name == "dinov2" else name
        if name in baselines and slot(slot_name).path.is_file():
            s = slot(slot_name)
            m = build_embedder(backend, checkpoint=s.path, arch=s.arch, device=device)
            methods.append(Method(f"{name} ({s.arch})", m.embed))

    rows, curves, per_cat, speed, embedded = [], {}, {}, {}, []
    ranks_ours, query_embeddings = None, {}  # the no-views row shares its queries with the first row
    for m in methods:
        embed_gallery = m.embed_gallery or m.embed
        m.embed(gallery_crops[:8])  # warm-up (cuDNN autotuning, lazy allocations)
        t = time.perf_counter()
        gal = embed_gallery(gallery_crops)
        eps = len(gallery_crops) / (time.perf_counter() - t)
        if m.embed not in query_embeddings:
            query_embeddings[m.embed] = m.embed(queries)
        qry = query_embeddings[m.embed]
        metrics, ranks, qps = retrieval_metrics(gal, qry, truth)
        rows.append((m.name, metrics))
        curves[m.name] = [recall_at_k(ranks, truth, k) for k in range(1, 11)]
        per_cat[m.name] = _per_category(ranks, truth, q_cat)
        speed[m.name] = (eps, qps)
        embedded.append((gal, qry))
        if ranks_ours is None:
            ranks_ours = ranks
    gal_ours, qry_ours = embedded[0]

    # two-stage, as the pipeline runs it: recall, then the reranker reorders the top k_recall
    w, k_recall = search["rerank_weight"], search["k_recall"]
    stages = [(f"ours, recall {size}px + rerank {reranker.name} (top {k_recall}, w={w})", reranker, w),
              (f"ours, recall {size}px + global rerank {rerank_size}px (top {k_recall}, w={GLOBAL_RERANK_WEIGHT})",
               ours_global, GLOBAL_RERANK_WEIGHT)]
    gal_rr = None
    for name, rr, weight in stages:
        t = time.perf_counter()
        gal = rr.embed_catalog(gallery_crops)
        eps = len(gallery_crops) / (time.perf_counter() - t)
        qry = rr.embed(queries)
        t = time.perf_counter()
        two = _two_stage(gal_ours, qry_ours, gal, qry, k_recall=k_recall, weight=weight, parts=rr.parts)
        speed[name] = (eps, len(queries) / max(time.perf_counter() - t, 1e-9))
        rows.append((name, _ranked_metrics(two, truth)))
        per_cat[name] = _per_category(two, truth, q_cat)
        curves[name] = [recall_at_k(two, truth, k) for k in range(1, 11)]
        if gal_rr is None:
            gal_rr = gal

    rows += _pipeline_queries(queries, ours, gal_ours, truth, reranker, gal_rr, k_recall, w)

    cls = _class_accuracy(ours, gallery_crops[:len(test)], [p.label for p in test], queries,
                          [photos[t].label for t in truth])
    return _write_report(out, rows=rows, per_cat=per_cat, speed=speed, cls=cls, curves=curves,
                         n_gallery=len(photos), seed=seed, weights=ours_path, queries=queries, truth=truth,
                         ranks=ranks_ours, gallery_crops=gallery_crops)


class _P:  # a path with the attributes load_small reads
    def __init__(self, path):
        self.path = path


def _two_stage(gal, qry, gal_rr, qry_rr, k_recall: int, weight: float, parts: int = 1) -> np.ndarray:
    """Top-10 ranks: recall by inner product, then the top ``k_recall`` reordered by
    ``(1 - weight) * recall + weight * rerank`` as the index does (:func:`part_similarity`)."""
    sims = qry @ gal.T
    top = np.argsort(-sims, axis=1)[:, :k_recall]
    out = []
    for q in range(len(qry)):
        cand = top[q]
        score = (1 - weight) * sims[q, cand] + weight * part_similarity(gal_rr[cand], qry_rr[q], parts)
        out.append(cand[np.argsort(-score, kind="stable")][:10])
    return np.array(out)


def _per_category(ranks: np.ndarray, truth: np.ndarray, q_cat: list[str]) -> dict:
    """recall@1 of the queries of each category (hat included)."""
    q_cat = np.array(q_cat)
    return {c: recall_at_k(ranks[q_cat == c], truth[q_cat == c], 1) for c in (*CATEGORIES, "hat")}


def _ranked_metrics(ranks: np.ndarray, truth: np.ndarray) -> dict:
    return {**{f"recall@{k}": recall_at_k(ranks, truth, k) for k in KS}, "mAP@5": map_at_k(ranks, truth, 5)}


def _pipeline_queries(queries, ours, gallery, truth, reranker, gal_rr, k_recall, weight) -> list:
    """The same queries through the pipeline's pose -> detect -> mask stages (default config):
    a recall-stage row and a row with the reranker, as the pipeline searches them."""
    from detectors.garments import build_garment_detector  # noqa: PLC0415
    from detectors.masks import build_masker  # noqa: PLC0415
    from detectors.pose import build_pose_checker  # noqa: PLC0415
    from pipeline.images import crop_masked  # noqa: PLC0415

    try:
        pose = build_pose_checker("mediapipe")
    except ImportError as e:  # a GPU box without the pipeline's extras: the retrieval rows still stand
        print(f"pipeline crops skipped: {e}")
        return []
    det = build_garment_detector("pose-regions", classifier=ours)
    masker = build_masker("person")
    crops, kept = [], []
    for i, q in enumerate(queries):
        verdict = pose.check(q)
        g = masker.mask(q, det.detect(q, verdict), verdict)
        if len(g):
            crops.append(crop_masked(q, g.boxes[0], g.masks[0], ours.preprocess.fill))
            kept.append(i)
    if not crops:
        return []
    qry = ours.embed(crops)
    m, _, _ = retrieval_metrics(gallery, qry, truth[kept])
    two = _two_stage(gallery, qry, gal_rr, reranker.embed(crops), k_recall, weight, reranker.parts)
    name = f"ours, pipeline crops ({len(kept)}/{len(queries)} queries kept a garment)"
    return [(name, m), (f"{name} + rerank {reranker.name}", _ranked_metrics(two, truth[kept]))]


def _class_accuracy(ours, test_crops, test_labels, queries, query_labels) -> dict:
    res = {}
    for name, crops, labels in (("test photos", test_crops, test_labels), ("queries", queries, query_labels)):
        probs = ours.classify(crops)
        pred = [CLASSES[i] for i in probs.argmax(1)]
        cats = ours.category_probs(probs)
        cat_names = list(cats)
        cat_pred = [cat_names[i] for i in np.stack([cats[c] for c in cat_names], 1).argmax(1)]
        keep = [i for i, lab in enumerate(labels) if CLASS_CATEGORY[lab]]
        res[name] = {
            "class_acc": float(np.mean([p == t for p, t in zip(pred, labels)])),
            "category_acc": float(np.mean([cat_pred[i] == CLASS_CATEGORY[labels[i]] for i in keep])),
            "confusion": _confusion(labels, pred),
        }
    return res


def _confusion(truth, pred) -> np.ndarray:
    m = np.zeros((len(CLASSES), len(CLASSES)), int)
    for t, p in zip(truth, pred):
        m[CLASSES.index(t), CLASSES.index(p)] += 1
    return m


def _write_report(out, *, rows, per_cat, speed, cls, curves, n_gallery, seed, weights, queries, truth,
                  ranks, gallery_crops) -> str:
    """report.md plus recall@k curves, the class confusion matrix and a grid of queries."""
    n_queries = len(queries)
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    lines = [f"# Retrieval evaluation\n\ngallery {n_gallery} catalog photos (test + validation), "
             f"{n_queries} re-photographed queries of the test photos (seed {seed}); weights {weights}. "
             "catalog photos/s: the gallery side embedded as the index embeds it (catalog views included); "
             "q/s: exact search only; two-stage rows: the reranker's catalog photos/s, and q/s of the rerank "
             "of the top k_recall\n",
             "| method | " + " | ".join(f"R@{k}" for k in KS) + " | mAP@5 | catalog photos/s | q/s |",
             "|---|" + "---|" * (len(KS) + 3)]
    for name, m in rows:
        eps, qps = speed.get(name, (None, None))
        sp = f"{eps:.0f} | {qps:.0f}" if eps else "- | -"
        lines.append(f"| {name} | " + " | ".join(f"{m[f'recall@{k}']:.3f}" for k in KS) + f" | {m['mAP@5']:.3f} | {sp} |")
    lines += ["", "recall@1 per category of the query:", "",
              "| method | " + " | ".join((*CATEGORIES, "hat")) + " |", "|---|" + "---|" * 5]
    for name, pc in per_cat.items():
        lines.append(f"| {name} | " + " | ".join(f"{pc[c]:.3f}" for c in (*CATEGORIES, "hat")) + " |")
    lines += ["", "class head of our model:", "", "| inputs | 10-class accuracy | category accuracy (4) |", "|---|---|---|"]
    for name, r in cls.items():
        lines.append(f"| {name} | {r['class_acc']:.3f} | {r['category_acc']:.3f} |")
    lines += ["", "![recall@k](recall_at_k.png) ![confusion](confusion.png) ![queries](queries.png)"]
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        ax.plot(range(1, 11), c, marker="o", label=name)
    ax.set_xlabel("k"), ax.set_ylabel("recall@k"), ax.set_ylim(0, 1.01), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.tight_layout(), fig.savefig(out / "recall_at_k.png", dpi=100), plt.close(fig)

    conf = cls["test photos"]["confusion"]
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(conf, cmap="Blues")
    ax.set_xticks(range(len(CLASSES)), CLASSES, rotation=60), ax.set_yticks(range(len(CLASSES)), CLASSES)
    for i in range(len(CLASSES)):
        for j in range(len(CLASSES)):
            ax.text(j, i, conf[i, j], ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title("class head, test photos")
    fig.tight_layout(), fig.savefig(out / "confusion.png", dpi=100), plt.close(fig)

    picks = np.linspace(0, len(queries) - 1, 8).astype(int)
    fig, axes = plt.subplots(len(picks), 6, figsize=(9, 1.6 * len(picks)))
    for r, q in enumerate(picks):
        axes[r, 0].imshow(queries[q]), axes[r, 0].set_title("query", fontsize=7)
        for c in range(5):
            g = ranks[q, c]
            axes[r, c + 1].imshow(gallery_crops[g])
            axes[r, c + 1].set_title("match" if g == truth[q] else f"#{c + 1}", fontsize=7,
                                     color="green" if g == truth[q] else "black")
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout(), fig.savefig(out / "queries.png", dpi=80), plt.close(fig)
    return text
