"""`make demo`'s last step: serve the index with gunicorn on loopback and query it over HTTP.

    python bench/demo_http.py --index demo-index --photo ../shared/data/people/ochuman_000817.jpg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api.launch import free_port, multipart, request, start, stop, wait_ready  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--index", default="demo-index")
    ap.add_argument("--photo", required=True)
    ap.add_argument("-k", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    proc = start(args.index, port, workers=1)
    try:
        wait_ready(port, proc, workers=1)
        body, ctype = multipart({}, [("image", Path(args.photo).name, Path(args.photo).read_bytes(), "image/jpeg")])
        status, data, _ = request(port, "POST", f"/v1/looks?k={args.k}", body, {"Content-Type": ctype})
        look = json.loads(data)
        print(f"\nPOST http://127.0.0.1:{port}/v1/looks -> {status}; pose: {look['pose']['reason']}")
        for g in look["garments"]:
            print(f"  [{g['index']}] {g['category']:8s} box {g['box']}: "
                  + ", ".join(f"{m['product_id'][:8]} ({m['score']:.2f})" for m in g["matches"]))
        print("  timings (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in look["timings_ms"].items()))
        print("served by gunicorn; run `make serve` and open http://127.0.0.1:8000/ for the upload page")
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
