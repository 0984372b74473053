"""Low-rank (Arnoldi) scores against exact scores on the built-in MNIST logistic regression.

For ranks 10, 50 and 100: Pearson and Spearman of the 4,000 x 100 score matrix
with the exact solver's, with the dropped spectrum kept as one mean eigenvalue
(infl's default) and dropped (what peers do), and the share of the trace kept.

    python benchmarks/lowrank.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

import infl
from task import cross_entropy, mnist_task


def main() -> None:
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    task = mnist_task(cache=out / "mnist_theta.pt")
    test = task.test(slice(0, 100))
    inf = infl.Influence(task.model, cross_entropy, l2=task.l2).fit(task.train)
    exact = inf.scores(test).numpy().ravel()
    T = inf.test_grads(test)
    G = inf.objective_.per_example_grads(task.X, task.y)
    print(f"{'rank':>5s} {'seconds':>8s} {'trace kept':>10s} {'Pearson':>8s} {'Spearman':>8s} "
          f"{'Pearson, remainder dropped':>27s} {'Spearman, dropped':>18s}")
    for rank in (10, 50, 100):
        t0 = time.perf_counter()
        solver = infl.Arnoldi(rank=rank).fit(inf.curvature_)
        S = -(solver.solve(T)[0] @ G.T).numpy().ravel()
        seconds = time.perf_counter() - t0
        dropped = -(((T @ solver.U.T) / solver.lam) @ solver.U @ G.T).numpy().ravel()
        print(f"{rank:5d} {seconds:8.1f} {100 * solver.captured_:9.1f}% {np.corrcoef(S, exact)[0, 1]:8.4f} "
              f"{spearmanr(S, exact)[0]:8.4f} {np.corrcoef(dropped, exact)[0, 1]:27.4f} {spearmanr(dropped, exact)[0]:18.4f}")


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
