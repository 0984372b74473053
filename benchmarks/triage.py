"""Koh & Liang's Figure 6 on the built-in data: fraction of flipped labels found by |self-influence|,
training loss and random checking, and test accuracy after fixing, over several seeds.

    python benchmarks/triage.py [--data mnist] [--seeds 0 1 2] [--l2 0.01]

Prints the tables and the check of the paper's claim (self-influence finds more flips than training
loss at every checked fraction up to 30%); writes benchmarks/out/triage_<data>.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from infl.data import load_builtin
from infl.report import figure_png
from infl.triage import check_claim, triage
from infl.triage_report import accuracy_rows, claim_text, found_rows, triage_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--l2", type=float, default=0.01)
    parser.add_argument("--flip", type=float, default=0.1)
    args = parser.parse_args()
    split = load_builtin(args.data)
    began = time.perf_counter()
    runs = triage(split, flip=args.flip, seeds=args.seeds, l2=args.l2)
    print(f"{args.data}: {len(split.y_train)} train, {len(split.y_test)} test, l2 = {args.l2:g}, "
          f"{args.flip:.0%} flipped, seeds {args.seeds}, {time.perf_counter() - began:.0f} s")
    header = "| checked | self-influence | training loss | random |\n|---|---|---|---|"
    print("\nfraction of flipped labels found, mean ± std (min-max):\n" + header)
    for row in found_rows(runs, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]):
        print("| " + " | ".join(row) + " |")
    print("\ntest accuracy after fixing the checked points, mean ± std:\n" + header)
    for row in accuracy_rows(runs):
        print("| " + " | ".join(row) + " |")
    print(f"\nall labels clean: {np.mean([r.accuracy_clean for r in runs]):.4f}, "
          f"nothing fixed: {np.mean([r.accuracy_noisy for r in runs]):.4f}")
    print(claim_text(check_claim(runs), len(runs)))
    for r in runs:
        margin = r.found["self-influence"] - r.found["training loss"]
        keep = (r.checked > 0) & (r.checked <= 0.3 + 1e-9)
        print(f"seed {r.seed}: self-influence minus loss over 1%..30%: min {margin[keep].min():+.3f}, "
              f"max {margin[keep].max():+.3f}, more at {(margin[keep] > 0).sum()} of {keep.sum()}")
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / f"triage_{args.data}.png").write_bytes(figure_png(triage_figure(runs), dpi=150))


if __name__ == "__main__":
    main()
