"""Linear datamodeling score (LDS, Park et al. 2023) on the built-in MNIST, via infl.validate.lds.

Retrain on `--subsets` random halves of the 4,000 training points and rank-correlate
(Spearman, per test point, then the mean) the actual test loss (cross-entropy) of the
first `--tests` test points with the prediction (1/n) sum_{i in subset} I_up,loss.

- logreg: the paper's 10-class logistic regression, l2 = 0.01, exact solver. Each
  subset is retrained to its optimum (mean loss over the subset, same l2; L-BFGS,
  gradient max <= 1e-6, warm-started at theta_hat: convex, so the start does not matter).
- mlp: 784 -> 16 -> 10 tanh MLP (12,730 parameters), l2 = 1e-3, trained deterministically:
  full-batch L-BFGS from a fixed initialisation (seed) to gradient max <= 1e-6. Each
  subset is retrained the same way from the same initialisation; influence at theta_hat
  with CG on the Hessian (+ --damping). --ensemble K repeats everything for K
  initialisations (seeds 0..K-1) and averages both the scores and the retrained losses
  (TRAK-style ensembling).

    python benchmarks/lds.py --model logreg [--subsets 100] [--tests 100]
    python benchmarks/lds.py --model mlp [--ensemble 1] [--damping 0.0]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import infl
from infl.data import load_builtin
from infl.objective import Objective
from infl.train import assign, minimize
from infl.validate import lds

from task import cross_entropy, mnist_task


def logreg(seed: int, d: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(d, 10).double()


def mlp(seed: int, d: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 10)).double()


SETTINGS = {  # model, l2, solver, training tolerance
    "logreg": (logreg, 0.01, "exact", 1e-6),
    "mlp": (mlp, 1e-3, "cg", 1e-6),
}


def trainer(make, seed: int, l2: float, tol: float, X: torch.Tensor, y: torch.Tensor, warm: torch.Tensor | None):
    """theta (p,) trained on (X, y) from the fixed initialisation of `seed` (or from `warm`)."""
    model = make(seed, X.shape[1])
    obj = Objective(model, cross_entropy, l2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few subsets stop just short of tol; reported below
        theta = minimize(obj, X, y, theta0=warm, tol=tol, max_iter=3000)
    return model, obj, theta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SETTINGS), default="logreg")
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--tests", type=int, default=100)
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--damping", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    make, l2, solver, tol = SETTINGS[args.model]
    split = load_builtin("mnist")
    X, y = torch.tensor(split.X_train), torch.tensor(split.y_train)
    Xt, yt = torch.tensor(split.X_test[: args.tests]), torch.tensor(split.y_test[: args.tests])

    t0 = time.perf_counter()
    members = []  # (objective, theta_hat) per ensemble member
    scores = 0
    for k in range(args.ensemble):
        if args.model == "logreg":  # theta_hat to gradient max 1e-9, shared with the other scripts
            model = mnist_task(cache=Path(__file__).parent / "out" / "mnist_theta.pt").model
            obj = Objective(model, cross_entropy, l2)
            theta = obj.theta
        else:
            model, obj, theta = trainer(make, k, l2, tol, X, y, None)
            assign(model, obj, theta)
        inf = infl.Influence(model, cross_entropy, l2=l2, damping=args.damping, solver=solver).fit((X, y))
        scores = scores + inf.scores((Xt, yt)).numpy() / args.ensemble
        members.append((obj, theta))
        print(f"member {k}: p={obj.p}, ||grad R||={inf.grad_norm_:.1e}, {inf.info.method} ({inf.info.note})", flush=True)
    print(f"trained and scored in {time.perf_counter() - t0:.0f} s", flush=True)

    def retrain(index: np.ndarray) -> np.ndarray:
        out = 0
        for k, (obj, theta) in enumerate(members):
            warm = theta if args.model == "logreg" else None
            _, _, theta_s = trainer(make, k, l2, tol, X[index], y[index], warm)
            out = out + obj.losses(theta_s, Xt, yt).detach().numpy() / args.ensemble
        return out

    t0 = time.perf_counter()
    res = lds(scores, retrain, subsets=args.subsets, fraction=0.5, seed=args.seed)
    print(f"{args.subsets} subset retrains x {args.ensemble} member(s) in {time.perf_counter() - t0:.0f} s")
    q = np.nanpercentile(res.spearman, [10, 50, 90])
    print(f"LDS {args.model}: mean Spearman {res.mean:.4f} over {args.tests} test points "
          f"(10/50/90th percentiles {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f}), solver {solver}, "
          f"damping {args.damping}, ensemble {args.ensemble}")


if __name__ == "__main__":
    main()
