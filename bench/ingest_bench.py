"""Catalog ingest throughput: the plain loop vs 2 local workers vs local Ray, same run; then 100k rows.

Part 1 runs ``shopfluence catalog ingest`` (a fresh subprocess each, so model loading counts
and the peak memory is the run's own: RSS summed over the process tree, sampled every 0.2 s)
on the first ``--n`` photos of clothing-dataset-small (one product a photo, the category
left to our model for classes that map to none). Engines: the plain loop (local, 1 worker:
the baseline), local with 2 worker processes, Ray with 2 actors (a local Ray on this machine).

Part 2 is the scale run: ``--scale`` rows made by tiling part 1's photos (repeated photos,
new ids). Reading and checking the rows is measured for real; the chunk files of the tiled
rows are made from part 1's per-product results of the same photos (the model is
deterministic, so a repeated photo gives the same vectors), and the merge into the index
(training, sharded encoding), the near-duplicate search and the reports are measured on them.
The embedding time of the scale run is the part-1 rate extrapolated; it says so.

    python bench/ingest_bench.py [--n 600] [--scale 100000] [--out reports/ingest-bench]

An engine is ``engine:workers`` or ``engine:workers:CONFIG.toml`` (that run uses the config, e.g.
``--engines local:1:no-views.toml,local:1`` prices the catalog views in the same run); the
first engine is the baseline of the ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_config  # noqa: E402
from pipeline.dataset import DEFAULT_DATA, list_photos  # noqa: E402
from pipeline.ingest import IngestOptions, IngestReport, chunk_path, finish, read_chunk, write_chunk  # noqa: E402
from pipeline.rows import plan, read_catalog  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def all_photos(data: Path):
    return [p for split in ("train", "validation", "test") for p in list_photos(data / "clothing-dataset-small" / split)]


def write_csv(path: Path, photos, repeat_to: int = 0) -> None:
    n = repeat_to or len(photos)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "images", "title", "brand", "price", "category"])
        for i in range(n):
            p = photos[i % len(photos)]
            pid = p.product_id if i < len(photos) else f"{p.product_id}-t{i // len(photos)}"
            w.writerow([pid, str(p.path), f"{p.label} {i}", ["Acme", "Borealis", "Cirrus"][i % 3], 10 + i % 90,
                        p.category or ""])


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def run_cli(args: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak tree RSS and stderr tail of one ``shopfluence`` run."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = [0]

    def sample():
        while p.poll() is None:
            peak[0] = max(peak[0], tree_rss(p.pid))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    out, err = p.communicate()
    if p.returncode:
        raise RuntimeError(f"{args} failed: {err[-3000:]}")
    return time.perf_counter() - t, peak[0], out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=600, help="products in part 1")
    ap.add_argument("--scale", type=int, default=100_000, help="rows in part 2 (0: skip)")
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--engines", default="local:1,local:2,ray:2")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default="reports/ingest-bench")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photos = all_photos(Path(args.data))
    tmp = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    results: dict = {"n": args.n, "chunk_size": args.chunk_size, "cpus": os.cpu_count(), "runs": []}
    try:
        cat = tmp / "catalog.csv"
        photos = photos[:: max(1, len(photos) // args.n)][: args.n]  # every class, spread over the splits
        write_csv(cat, photos)
        first_work = None
        for spec in args.engines.split(","):
            engine, workers, *config = spec.split(":", 2)
            tag = f"{engine}-{workers}-{len(results['runs'])}"
            work = tmp / f"work-{tag}"
            wall, peak, _ = run_cli([*(["--config", config[0]] if config else []), "catalog", "ingest", str(cat),
                                     "--index", str(tmp / f"index-{tag}"),
                                     "--work", str(work), "--engine", engine, "--workers", workers,
                                     "--chunk-size", str(args.chunk_size), "--new-index"])
            summary = json.loads((work / "summary.json").read_text())
            indexed = sum(summary["indexed"].values())
            results["runs"].append({"engine": engine, "workers": int(workers), "config": config[0] if config else "default",
                                    "wall_s": round(wall, 2),
                                    "products": summary["products"], "indexed": indexed,
                                    "products_per_s": round(summary["products"] / wall, 2),
                                    "peak_rss_mb": round(peak / 1e6)})
            first_work = first_work or work
            print(json.dumps(results["runs"][-1]), flush=True)
        base = results["runs"][0]["products_per_s"]
        for r in results["runs"]:
            r["speedup_vs_plain_loop"] = round(r["products_per_s"] / base, 2)
        if args.scale:
            results["scale"] = scale_run(tmp, photos, first_work, args, base)
            print(json.dumps(results["scale"]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| engine | workers | config | products | wall s | products/s | vs first | peak RSS MB |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['engine']} | {r['workers']} | {r['config']} | {r['products']} | {r['wall_s']} | {r['products_per_s']} | "
              f"{r['speedup_vs_plain_loop']}x | {r['peak_rss_mb']} |")
    if "scale" in results:
        s = results["scale"]
        print(f"\nscale: {s['rows']} rows; read + check {s['plan_s']} s; merge {s['finish_s']} s {s['finish_parts_s']} "
              f"({s['factories']}); {s['near_duplicate_groups']} near-duplicate groups; peak RSS of the merge "
              f"{s['finish_peak_rss_mb']} MB; embedding at the plain loop's rate would take "
              f"{s['embed_s_extrapolated'] / 3600:.1f} h")
    print(f"\nwritten {out / 'results.json'}")
    return 0


def scale_run(tmp: Path, photos, measured_work: Path, args, rate: float) -> dict:
    """Rows tiled to ``args.scale``: real planning; chunks from part 1's results; real merge."""
    cat = tmp / "scale.csv"
    write_csv(cat, photos, repeat_to=args.scale)
    t = time.perf_counter()
    products, rejects, _ = plan(read_catalog(cat), cat.parent)
    plan_s = time.perf_counter() - t
    # part 1's per-product results, by photo path
    done = {}
    k = 0
    while chunk_path(measured_work, k).is_file():
        c = read_chunk(measured_work, k)
        for i, pid in enumerate(c["ids"]):
            done[c["records"][i]["image"]] = (c["vectors"][i], None if c["rerank"] is None else c["rerank"][i],
                                             c["records"][i], c["tags"][i], [h for h in c["hashes"] if h[0] == pid])
        k += 1
        signature = c["signature"]
    work = tmp / "scale-work"
    chunks = 0
    known = [p for p in products if p["images"][0] in done]
    for start in range(0, len(known), args.chunk_size):
        part = known[start:start + args.chunk_size]
        vec = [done[p["images"][0]] for p in part]
        pid = [p["record"]["product_id"] for p in part]
        result = {"ids": pid, "vectors": np.stack([v[0] for v in vec]),
                  "rerank": None if vec[0][1] is None else np.stack([v[1] for v in vec]),
                  "records": [{**v[2], **p["record"], "category": v[2]["category"]} for v, p in zip(vec, part)],
                  "tags": [{**v[3], "product_id": i} for v, i in zip(vec, pid)],
                  "rejects": [], "hashes": [(i, h[1], h[2]) for v, i in zip(vec, pid) for h in v[4]]}
        write_chunk(work, chunks, result, signature)
        chunks += 1
    report = IngestReport(str(tmp / "scale-index"), str(work))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    finish(work, tmp / "scale-index", load_config(), IngestOptions(workers=2, new_index=True), report, rejects, chunks)
    finish_s = time.perf_counter() - t
    manifest = json.loads((tmp / "scale-index" / "manifest.json").read_text())
    return {"rows": args.scale, "products": len(known), "plan_s": round(plan_s, 2), "finish_s": round(finish_s, 2),
            "factories": {c: f"{m['factory']} ({manifest['counts'][c]})" for c, m in manifest["indexes"].items()},
            "near_duplicate_groups": report.near_duplicate_groups, "finish_parts_s": report.timings_s,
            "finish_peak_rss_mb": round(max(rss0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1e3),
            "embed_s_extrapolated": round(args.scale / rate), "note": "chunk files made from part 1's vectors "
            "of the same photos; only part 1 ran the models"}


if __name__ == "__main__":
    sys.exit(main())
