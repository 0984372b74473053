"""Reproduce the paper's Figure 2 (left) on the built-in MNIST: influence vs leave-one-out retraining.

For each test point the report explains (the first 3 the model gets wrong),
retrain without each of the 100 training points with the largest |influence|
plus 50 random ones (exact convex protocol: warm start at theta_hat, Newton
steps with the factored Hessian until the retraining gradient's largest entry
is below 1e-10; validate.retrain_all), and print Pearson R and Spearman rho between the predicted
change in test loss, -(1/n) I_up,loss, and the actual change, per solver.

    python benchmarks/figure2.py [--tests 3] [--top 100] [--random 50] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import infl
from infl.validate import correlations, retrain_all

from task import cross_entropy, misclassified, mnist_task

SOLVERS = {"exact": "exact", "cg": "cg", "lissa": "lissa"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", type=int, default=3)
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--random", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    task = mnist_task(cache=args.out / "mnist_theta.pt")
    tests = misclassified(task, args.tests)
    test = task.test(tests)
    n = task.X.shape[0]

    scores, fitted = {}, {}
    for name, solver in SOLVERS.items():
        t0 = time.perf_counter()
        inf = infl.Influence(task.model, cross_entropy, l2=task.l2, solver=solver).fit(task.train)
        scores[name] = inf.scores(test).numpy()
        fitted[name] = inf
        print(f"{name:6s} scores in {time.perf_counter() - t0:6.1f} s  ({inf.info.note})", flush=True)

    rng = np.random.default_rng(args.seed)
    chosen = []
    for row in scores["exact"]:
        top = np.argsort(-np.abs(row))[: args.top]
        rest = np.setdiff1d(np.arange(n), top)
        chosen.append(np.concatenate([top, rng.choice(rest, args.random, replace=False)]))
    union = np.unique(np.concatenate(chosen))
    inf = fitted["exact"]
    obj = inf.objective_
    Xt, yt = inf.test_tensors(test)
    base = obj.losses(obj.theta, Xt, yt).detach().numpy()
    actual = {}
    with tqdm(total=len(union), desc="leave-one-out retraining") as bar:
        for start in range(0, len(union), 48):
            thetas = retrain_all(inf, union[start:start + 48].tolist(), done=bar.update)
            actual.update({j: obj.losses(t, Xt, yt).detach().numpy() - base for j, t in thetas.items()})

    print(f"\nFigure 2 (left), MNIST logistic regression, n={n}, l2={task.l2}; "
          f"{args.top} top-|influence| + {args.random} random points per test point")
    print(f"{'test':>6s} {'solver':>7s} {'Pearson':>9s} {'Spearman':>9s}")
    summary = {name: [] for name in SOLVERS}
    for t, (ti, idx) in enumerate(zip(tests, chosen)):
        act = np.array([actual[int(j)][t] for j in idx])
        for name in SOLVERS:
            r, rho = correlations(-scores[name][t, idx] / n, act)
            summary[name].append(r)
            print(f"{ti:6d} {name:>7s} {r:9.4f} {rho:9.4f}")
        if t == 0:
            from infl.report import figure_loo
            figure_loo(-scores["exact"][t, idx] / n, act, args.out / "figure2_left.png")
    for name, rs in summary.items():
        print(f"mean Pearson R {name:>6s}: {np.mean(rs):.4f}")


if __name__ == "__main__":
    main()
