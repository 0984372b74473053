"""Koh & Liang's Figure 6 on the built-in data: fraction of flipped labels found by |self-influence|,
training loss and random checking, and test accuracy after fixing, over several seeds; with several
--l2 values, one line per l2 (the regularisation decides which ranking wins).

    python benchmarks/triage.py [--data mnist] [--seeds 0 1 2] [--l2 0.01 ...] [--no-fix]

Prints the tables, the fraction of flipped points the noisy model fits (memorises), and the check of
the paper's claim (self-influence finds more flips than training loss at every checked fraction up to
30%); with one l2 and fixing, writes benchmarks/out/triage_<data>.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from infl.data import load_builtin
from infl.report import figure_png
from infl.triage import FIX_GRID, check_claim, found_fraction, spread, triage
from infl.triage_report import accuracy_rows, claim_text, found_rows, triage_figure

FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3)


def sweep_row(l2: float, runs: list, seconds: float) -> str:
    """One markdown row: l2, flips fitted, test accuracy (noisy), found by self-influence / loss, verdict."""
    cells = []
    for f in FRACTIONS:
        col = int(np.argmin(np.abs(runs[0].checked - f)))
        si, loss = (spread(runs, "found", m) for m in ("self-influence", "training loss"))
        cells.append(f"{si[0][col]:.3f} ± {si[1][col]:.3f} / {loss[0][col]:.3f} ± {loss[1][col]:.3f}")
    claim = check_claim(runs)
    fitted = np.array([r.flips_fitted for r in runs])
    acc = np.array([r.accuracy_noisy for r in runs])
    verdict = f"{'holds' if claim.holds else 'no'} ({int((claim.margins > 0).sum())}/{len(claim.margins)})"
    return (f"| {l2:g} | {fitted.mean():.2f} ± {fitted.std():.2f} | {acc.mean():.3f} ± {acc.std():.3f} | "
            + " | ".join(cells) + f" | {verdict} | {seconds:.0f} |")


def log_odds_row(l2: float, runs: list) -> str:
    """One markdown row for the score the paper's released code ranks by: the self-influence on the log-odds
    of a point's own label, |I_up,loss(z_i, z_i)| / (1 - p_i) (binary: sigma_i x_i^T H^-1 x_i, not sigma_i^2
    x_i^T H^-1 x_i); found fractions (mean over seeds) and the fractions 1%..30% where it finds more than loss."""
    checked = runs[0].checked
    keep = (checked > 0) & (checked <= 0.3 + 1e-9)
    found, loss = [], []
    for r in runs:
        score = np.abs(r.ranking.self_influence) / np.maximum(-np.expm1(-r.ranking.loss), np.finfo(float).tiny)
        found.append(found_fraction(np.argsort(-score, kind="stable"), r.flipped, checked))
        loss.append(r.found["training loss"])
    found, loss = np.mean(found, 0), np.mean(loss, 0)
    cells = [f"{found[int(np.argmin(np.abs(checked - f)))]:.3f}" for f in FRACTIONS]
    return f"| {l2:g} | " + " | ".join(cells) + f" | {int((found[keep] > loss[keep]).sum())}/{int(keep.sum())} |"


def full_report(runs: list, data: str) -> None:
    """Found and accuracy tables, the claim, per-seed margins and the figure for one l2."""
    header = "| checked | self-influence | training loss | random |\n|---|---|---|---|"
    print("\nfraction of flipped labels found, mean ± std (min-max):\n" + header)
    for row in found_rows(runs, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]):
        print("| " + " | ".join(row) + " |")
    if len(runs[0].fixed):
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
    if len(runs[0].fixed):
        out = Path(__file__).parent / "out"
        out.mkdir(exist_ok=True)
        (out / f"triage_{data}.png").write_bytes(figure_png(triage_figure(runs), dpi=150))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--l2", type=float, nargs="+", default=[0.01])
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--no-fix", action="store_true", help="rank and count only; no retraining after fixing")
    args = parser.parse_args()
    split = load_builtin(args.data)
    fixed = () if args.no_fix else FIX_GRID
    print(f"{args.data}: {len(split.y_train)} train, {len(split.y_test)} test, {args.flip:.0%} flipped, "
          f"seeds {args.seeds}")
    print("\n| l2 | flips fitted | test acc. (noisy) | " + " | ".join(f"{f:.0%} SI / loss" for f in FRACTIONS)
          + " | claim (fractions) | s |\n|---" * 1 + "|---" * (len(FRACTIONS) + 4) + "|", flush=True)
    all_runs = {}
    for l2 in args.l2:
        began = time.perf_counter()
        all_runs[l2] = triage(split, flip=args.flip, seeds=args.seeds, l2=l2, fixed=fixed)
        print(sweep_row(l2, all_runs[l2], time.perf_counter() - began), flush=True)
    print("\nthe released code's score, self-influence on the log-odds of the own label (mean over seeds):\n| l2 | "
          + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " | more than loss |\n" + "|---" * (len(FRACTIONS) + 2) + "|")
    for l2, runs in all_runs.items():
        print(log_odds_row(l2, runs))
    if len(args.l2) == 1:
        full_report(all_runs[args.l2[0]], args.data)


if __name__ == "__main__":
    main()
