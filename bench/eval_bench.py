"""Run the held-out retrieval evaluation and print its table (GPU machine or CPU).

    python bench/eval_bench.py [--baselines histogram,random,fashion-clip,dinov2]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluate import run_eval  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="reports/eval")
    ap.add_argument("--baselines", default="histogram,random,fashion-clip,dinov2")
    args = ap.parse_args()
    print(run_eval(out=Path(args.out), baselines=args.baselines.split(",")))
