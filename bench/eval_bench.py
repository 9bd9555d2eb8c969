"""Run the held-out retrieval evaluation and print its table (GPU machine or CPU).

    python bench/eval_bench.py [--device cuda] [--weights reid-v2|FILE] [--data DIR]
                               [--baselines histogram,random,fashion-clip,dinov2] [--rerank-size N]

On the GPU machine the photos travel packed (``shopfluence pack .pack``, then
``--data .pack/clothing-dataset-small``); the figures of record come from ``make eval``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluate import run_eval  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/eval")
    ap.add_argument("--data", default=None, help="clothing-dataset-small folder")
    ap.add_argument("--weights", default="reid-v2", help="manifest slot or file of our model")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--rerank-size", type=int, default=256, help="input size of the global rerank row compared in the same run")
    ap.add_argument("--baselines", default="histogram,random,fashion-clip,dinov2")
    args = ap.parse_args()
    print(run_eval(out=Path(args.out), data=args.data, weights=args.weights, device=args.device,
                   rerank_size=args.rerank_size, baselines=args.baselines.split(",")))
