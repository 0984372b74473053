"""EKFAC(refine=k): how the preconditioner's extra damping and the closing step change the error.

For each model, the dense Gauss-Newton matrix G (+ l2 + damping) gives the exact s_test for 20 test
points; each setting's answer is scored by its relative G-norm error, sum ||x - x*||_G^2 / sum ||x*||_G^2,
and by the mean Spearman correlation of its scores with the exact ones over the training points. The
baseline, measured in the same run, is the refinement as it was before: no extra damping (c = 0) and no
closing step. c is refine_damping: the preconditioner's damping is (1 + c) x (l2 + damping).

Models: a 64-64-10 tanh MLP on scikit-learn's digits (1,400 train, l2 1e-3 and 1e-4, L-BFGS to a
stationary point) and, with --cnn, Figure 2's small CNN on the built-in MNIST (4,000 train, Adam's
theta-tilde cached by figure2_cnn.py, l2 1e-3, damping 0.01 and 0).

    python benchmarks/refine_damping.py [--cnn] [--steps 2 3 4 6] [--c 0 1 2 4 8]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

import infl
from infl.objective import Objective
from infl.solvers import krylov
from infl.train import assign, minimize
from task import cross_entropy

HERE = Path(__file__).resolve().parent


def study(name: str, model: nn.Module, train: tuple, test: tuple, l2: float, damping: float, steps: list[int],
          cs: list[float]) -> None:
    """One model: rows of steps, columns of c; errors relative to the exact solve, and their ratio to the baseline."""
    closing = krylov._closing_step
    print(f"\n{name}: l2 {l2:g}, damping {damping:g}; relative G-norm error (Spearman), ratio to the baseline")
    exact = None
    for k in steps:
        inf = infl.Influence(model, cross_entropy, l2=l2, damping=damping, solver=infl.EKFAC(refine=k),
                             curvature="gauss-newton", stationarity_tol=float("inf")).fit(train)
        B = inf.test_grads(test)
        if exact is None:
            G = inf.operator_.to_dense()
            exact = torch.linalg.solve(G, B.T).T
            grads = torch.cat([g for _, g in inf._train_grads()])
            ref = (exact @ grads.T).numpy()

        def measure(c: float, close: bool) -> tuple[float, float]:
            inf.solver.refine_damping = c
            krylov._closing_step = closing if close else (lambda op, M, X, R, res, bnorm, movable: (X, res, ""))
            try:
                X, _ = inf.solver.solve(B)
            finally:
                krylov._closing_step = closing
            E = X - exact
            err = float(((E @ G) * E).sum() / ((exact @ G) * exact).sum())
            S = (X @ grads.T).numpy()
            return err, float(np.mean([spearmanr(a, b)[0] for a, b in zip(S, ref)]))

        base = measure(0.0, False)
        cells = [f"baseline {base[0]:.2e} ({base[1]:.3f})"]
        for c in cs:
            err, sp = measure(c, True)
            cells.append(f"c={c:g}: {err:.2e} ({sp:.3f}) {err / base[0]:.2f}x")
        print(f"  {k} steps: " + " | ".join(cells), flush=True)


def digits_mlp(l2: float) -> tuple[nn.Module, tuple, tuple]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y = torch.tensor(d.data / 16.0), torch.tensor(d.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)).double()
    obj = Objective(model, cross_entropy, l2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assign(model, obj, minimize(obj, X[:1400], y[:1400], tol=1e-7, max_iter=3000))
    return model, (X[:1400], y[:1400]), (X[1400:1420], y[1400:1420])


def mnist_cnn(out: Path) -> tuple[nn.Module, tuple, tuple]:
    from figure2_cnn import L2, SmallCNN, train_adam

    from infl.data import load_builtin

    split = load_builtin("mnist")
    X, y = torch.tensor(split.X_train), torch.tensor(split.y_train)
    cache = out / "cnn_theta_e30_s0.pt"
    if cache.exists():
        model = SmallCNN().double()
        assign(model, Objective(model, cross_entropy, L2), torch.load(cache))
    else:
        model = train_adam(X, y, 30, 0)
        torch.save(Objective(model, cross_entropy, L2).theta, cache)
    return model, (X, y), (torch.tensor(split.X_test[:20]), torch.tensor(split.y_test[:20]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cnn", action="store_true", help="also Figure 2's CNN on MNIST (a few minutes)")
    ap.add_argument("--steps", type=int, nargs="+", default=[2, 3, 4, 6])
    ap.add_argument("--c", type=float, nargs="+", default=[0, 1, 2, 4, 8], help="refine_damping values")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for l2 in (1e-3, 1e-4):
        study("digits 64-64-10 tanh MLP", *digits_mlp(l2), l2, 0.0, args.steps, args.c)
    if args.cnn:
        model, train, test = mnist_cnn(args.out)
        for damping in (0.01, 0.0):
            study("MNIST CNN (Figure 2), Adam's theta-tilde", model, train, test, 1e-3, damping, args.steps, args.c)


if __name__ == "__main__":
    main()
