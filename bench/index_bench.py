"""Recall stage at catalog scale: IVF-PQ + exact re-score against IndexFlatIP, same run.

Vectors: the real embeddings (our default recall embedder) of the 3,781 clothing-dataset-small
photos, grown to ``--n`` per category with indexes/synthetic.py (mixes of two real vectors plus
noise; no public million-vector set can be downloaded here). Queries are grown the same way
with another seed. One category is measured: the four are the same structure.

Prints: build time (single process, and sharded over 2 processes), recall@10 of the final list
vs exact, ms per query at batch 1 (p50/p95), queries/s at batch 64, bytes per vector of the
recall stage, size on disk, cold-start load time; a recall/QPS table over nprobe and a PNG.

    python bench/index_bench.py [--n 1000000] [--queries 1000] [--out reports/index-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from indexes.category import CategoryIndex, choose_factory, gpu_count  # noqa: E402
from indexes.shards import build_sharded  # noqa: E402
from indexes.synthetic import grow_embeddings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def real_embeddings() -> np.ndarray:
    """Embeddings of every clothing-dataset-small photo by the default recall embedder (cached)."""
    from detectors.embedders import build_embedder  # noqa: PLC0415
    from pipeline.config import load_config  # noqa: PLC0415
    from pipeline.dataset import clothing_split  # noqa: PLC0415
    from pipeline.images import load_image  # noqa: PLC0415
    from pipeline.weights import resolve  # noqa: PLC0415

    cfg = load_config()["embedder"]
    emb = build_embedder(cfg["backend"], checkpoint=resolve(cfg["weights"]),
                         **{k: v for k, v in cfg.items() if k not in ("backend", "weights")})
    cache = ROOT / ".cache" / f"bench-embeddings-{emb.name}-{emb.weights_sha256[:12]}.npy"
    if cache.is_file():
        return np.load(cache)
    photos = [p for split in ("train", "validation", "test") for p in clothing_split(split)]
    vecs = []
    for i in range(0, len(photos), 64):
        vecs.append(emb.embed([load_image(p.path, max_side=256) for p in photos[i:i + 64]]))
        print(f"\rembedded {min(i + 64, len(photos))}/{len(photos)} catalog photos", end="", file=sys.stderr)
    print(file=sys.stderr)
    cache.parent.mkdir(exist_ok=True)
    np.save(cache, np.concatenate(vecs))
    return np.load(cache)


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)]))


def rows_of(results) -> np.ndarray:
    return np.array([[c.row for c in r] + [-1] * (10 - len(r)) for r in results])


def latency(index: CategoryIndex, queries: np.ndarray, n: int = 200) -> tuple[float, float]:
    times = []
    for q in queries[:n]:
        t = time.perf_counter()
        index.search(q, 10)
        times.append(1000 * (time.perf_counter() - t))
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def qps(index: CategoryIndex, queries: np.ndarray, batch: int = 64) -> float:
    t = time.perf_counter()
    for i in range(0, len(queries), batch):
        index.search_batch(queries[i:i + batch], 10)
    return len(queries) / (time.perf_counter() - t)


def cold_load(folder: Path) -> dict:
    """Load in a fresh interpreter: seconds to open, and resident memory it added, per vector."""
    code = (
        f"import sys, time, json, os; sys.path.insert(0, {str(ROOT)!r})\n"
        "from indexes.category import CategoryIndex\nimport numpy as np\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "r0 = rss()\n"
        f"t = time.perf_counter(); ix = CategoryIndex.load(__import__('pathlib').Path({str(folder)!r}))\n"
        "s = time.perf_counter() - t; ix.search(np.ones(ix.dim, np.float32) / ix.dim ** 0.5, 10)\n"
        "print(json.dumps({'load_s': s, 'rss_bytes': rss() - r0,"
        " 'n': len(ix)}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--factory", default="auto")
    ap.add_argument("--nprobes", default="4,8,16,32,64,128")
    ap.add_argument("--rescores", default="200,1000", help="candidates re-scored exactly (comma list)")
    ap.add_argument("--out", default="reports/index-bench")
    ap.add_argument("--skip-sharded", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, GPUs seen by faiss: {gpu_count()}")

    real = real_embeddings()
    base = grow_embeddings(real, args.n, seed=0)
    queries = grow_embeddings(real, args.queries, seed=1)
    ids = [f"p{i}" for i in range(args.n)]
    d = base.shape[1]
    factory = choose_factory(args.n, d) if args.factory == "auto" else args.factory
    print(f"{args.n:,} vectors of {d} dims grown from {len(real)} real embeddings; {len(queries)} queries; {factory}")

    # Exact baseline, same run.
    t = time.perf_counter()
    flat = CategoryIndex.build(ids, base, factory="Flat")
    flat_build = time.perf_counter() - t
    t = time.perf_counter()
    truth = rows_of(flat.search_batch(queries, 10))
    flat_qps64 = len(queries) / (time.perf_counter() - t)
    flat_p50, flat_p95 = latency(flat, queries, 50)
    flat_bytes = faiss.serialize_index(flat.index).nbytes / args.n
    del flat

    t = time.perf_counter()
    rescores = [int(x) for x in args.rescores.split(",")]
    ivf = CategoryIndex.build(ids, base, factory=factory)
    build_s = time.perf_counter() - t
    sharded_s = None
    if not args.skip_sharded:
        t = time.perf_counter()
        sharded = build_sharded(ids, base, factory=factory, shards=4, workers=2)
        sharded_s = time.perf_counter() - t
        same = recall_at(rows_of(sharded.search_batch(queries[:100], 10)), rows_of(ivf.search_batch(queries[:100], 10)))
        print(f"sharded build (4 shards, 2 processes) agrees with the single build on {same:.3f} of top-10 rows")
        del sharded

    table = []
    for nprobe in [int(x) for x in args.nprobes.split(",")]:
        ivf.set_params(nprobe=nprobe, rescore=10)  # the compressed ranking alone, no exact re-score
        raw = recall_at(rows_of(ivf.search_batch(queries, 10)), truth)
        for rescore in rescores:
            ivf.set_params(rescore=rescore)
            final = recall_at(rows_of(ivf.search_batch(queries, 10)), truth)
            p50, p95 = latency(ivf, queries)
            table.append({"nprobe": nprobe, "rescore": rescore, "recall@10": final, "recall@10 no rescore": raw,
                          "p50 ms": p50, "p95 ms": p95, "qps@64": qps(ivf, queries)})

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        folder = Path(tmp) / "upper"
        ivf.save(folder)
        disk = {f.name: f.stat().st_size for f in folder.iterdir()}
        cold = cold_load(folder)
    recall_bytes = disk["recall.faiss"] / args.n

    print("\n| index | build s | recall@10 | p50 ms (batch 1) | p95 ms | q/s (batch 64) | bytes/vector |")
    print("|---|---|---|---|---|---|---|")
    print(f"| Flat (exact) | {flat_build:.1f} | 1.000 | {flat_p50:.2f} | {flat_p95:.2f} | {flat_qps64:.0f} | {flat_bytes:.0f} |")
    for r in table:
        print(f"| {factory} nprobe {r['nprobe']} + rescore {r['rescore']} | {build_s:.1f} | {r['recall@10']:.3f} "
              f"(raw {r['recall@10 no rescore']:.3f}) | {r['p50 ms']:.2f} ({flat_p50 / r['p50 ms']:.0f}x faster) "
              f"| {r['p95 ms']:.2f} | {r['qps@64']:.0f} ({r['qps@64'] / flat_qps64:.1f}x) | {recall_bytes:.1f} |")
    if sharded_s:
        print(f"\nbuild: single process {build_s:.1f} s, 4 shards on 2 processes {sharded_s:.1f} s "
              f"({build_s / sharded_s:.2f}x)")
    print(f"disk: recall.faiss {disk['recall.faiss'] / 1e6:.1f} MB ({recall_bytes:.1f} B/vector), exact vectors "
          f"{disk['vectors.npy'] / 1e6:.1f} MB (fp16, memory-mapped), ids {disk['ids.npy'] / 1e6:.1f} MB")
    print(f"cold start: {cold['load_s']:.2f} s to load {cold['n']:,} vectors; resident memory added "
          f"{cold['rss_bytes'] / cold['n']:.0f} B/vector (includes ids and the first search)")

    results = {"n": args.n, "dim": d, "factory": factory, "flat": {"build_s": flat_build, "p50_ms": flat_p50,
               "p95_ms": flat_p95, "qps64": flat_qps64, "bytes_per_vector": flat_bytes},
               "ivf": {"build_s": build_s, "sharded_build_s": sharded_s, "sweep": table, "disk": disk,
                       "recall_bytes_per_vector": recall_bytes, "cold": cold}, "threads": faiss.omp_get_max_threads()}
    (out / "index_bench.json").write_text(json.dumps(results, indent=2))
    plot(table, flat_qps64, factory, out / "recall_qps.png")
    print(f"\nwrote {out / 'index_bench.json'} and {out / 'recall_qps.png'}")


def plot(table, flat_qps, factory, png: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 4))
    for rescore in sorted({r["rescore"] for r in table}):
        rows = [r for r in table if r["rescore"] == rescore]
        ax.plot([r["qps@64"] for r in rows], [r["recall@10"] for r in rows], "o-", label=f"re-score {rescore}")
    rows = [r for r in table if r["rescore"] == table[0]["rescore"]]
    ax.plot([r["qps@64"] for r in rows], [r["recall@10 no rescore"] for r in rows], "s--", label="PQ ranking alone")
    ax.set_title(f"{factory}: nprobe/re-score depth", fontsize=9)
    for r in table:
        ax.annotate(f"{r['nprobe']}/{r['rescore']}", (r["qps@64"], r["recall@10"]), fontsize=6)
    ax.scatter([flat_qps], [1.0], marker="*", s=120, c="k", label="IndexFlatIP")
    ax.set_xscale("log"), ax.set_xlabel("queries/s (batch 64)"), ax.set_ylabel("recall@10 vs exact")
    ax.legend(), ax.grid(alpha=0.3), fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
