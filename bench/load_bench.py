"""Load on the real HTTP service: N concurrent clients on loopback for a bounded time against
gunicorn, POSTing real outfit photos to /v1/looks. Prints throughput, p50/p95/p99 latency and
the error count per client count; the 1-client row is the baseline of the same run.

    python bench/load_bench.py [--clients 1,2,4,8] [--seconds 20] [--workers 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.launch import free_port, multipart, request, start, stop, wait_ready  # noqa: E402
from pipeline.catalog import index_folder  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.dataset import DEFAULT_DATA  # noqa: E402

PHOTOS = ["coco_000000000785.jpg", "coco_000000197388.jpg", "crowdpose_103319.jpg", "ochuman_000817.jpg",
          "ochuman_003799.jpg"]


def run_clients(port: int, bodies: list, clients: int, seconds: float):
    lat, errors, stop_at = [], [], time.perf_counter() + seconds
    lock = threading.Lock()

    def client(i):
        n = i
        while time.perf_counter() < stop_at:
            body, ctype = bodies[n % len(bodies)]
            n += 1
            t = time.perf_counter()
            try:
                status, _, _ = request(port, "POST", "/v1/looks?k=5", body, {"Content-Type": ctype}, timeout=120)
            except OSError as e:
                status = repr(e)
            with lock:
                (lat if status == 200 else errors).append(time.perf_counter() - t if status == 200 else status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.array(lat) * 1000, errors, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--index", help="serve this index (default: build one from 20 photos a class)")
    args = ap.parse_args()
    data = Path(DEFAULT_DATA)
    with tempfile.TemporaryDirectory() as tmp:
        index = args.index or Path(tmp) / "index"
        if not args.index:
            index_folder(data / "clothing-dataset-small" / "test", index, load_config(), limit_per_class=20)
        port = free_port()
        proc = start(index, port, workers=args.workers, threads=args.threads)
        try:
            wait_ready(port, proc, workers=args.workers)
            bodies = [multipart({}, [("image", p, (data / "people" / p).read_bytes(), "image/jpeg")]) for p in PHOTOS]
            run_clients(port, bodies, 1, 3)  # warm-up
            print(f"gunicorn: {args.workers} worker(s) x {args.threads} threads, {args.seconds:.0f} s per row, "
                  f"{len(PHOTOS)} real outfit photos")
            print("| clients | looks/s | vs 1 client | p50 ms | p95 ms | p99 ms | errors |")
            print("|---|---|---|---|---|---|---|")
            base = None
            for c in [int(x) for x in args.clients.split(",")]:
                lat, errors, wall = run_clients(port, bodies, c, args.seconds)
                rate = len(lat) / wall
                base = base or rate
                p = np.percentile(lat, [50, 95, 99]) if len(lat) else [float("nan")] * 3
                print(f"| {c} | {rate:.1f} | {rate / base:.2f}x | {p[0]:.0f} | {p[1]:.0f} | {p[2]:.0f} | {len(errors)} |")
                if errors:
                    print(f"  errors: {errors[:5]}")
        finally:
            stop(proc)


if __name__ == "__main__":
    main()
