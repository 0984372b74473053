"""Linear datamodeling score (LDS, Park et al. 2023) on the built-in MNIST, via infl.validate.lds.

Retrain on `--subsets` random halves of the 4,000 training points and rank-correlate
(Spearman, per test point, then the mean) the actual test loss (cross-entropy) of the
first `--tests` test points with the prediction (1/n) sum_{i in subset} I_up,loss.

- logreg: the paper's 10-class logistic regression, l2 = 0.01, exact solver. Each
  subset is retrained to its optimum (mean loss over the subset, same l2; L-BFGS,
  gradient max <= 1e-6, warm-started at theta_hat: convex, so the start does not matter).
- mlp: 784 -> 16 -> 10 tanh MLP (12,730 parameters), l2 = 1e-3, trained deterministically:
  full-batch L-BFGS from a fixed initialisation (seed) to gradient max <= 1e-6. Each
  subset is retrained the same way from the same initialisation, so retraining is a
  deterministic function of the subset; influence at theta_hat with CG (Nystrom
  preconditioner) on the Hessian or the Gauss-Newton matrix (--curvature), + --damping.
  --ensemble K repeats everything for K initialisations (seeds 0..K-1) and averages
  both the predictions and the retrained losses (TRAK-style ensembling).

The prediction for each subset S is formed with one solve per subset, not per test point
(H is symmetric): -(1/n) grad L(z_test)^T (H + damping I)^{-1} sum_{i in S} grad L(z_i),
the same number as (1/n) sum_{i in S} I_up,loss (infl.validate.lds_of_predictions).

--damping takes one value or several (comma-separated): with several, each is scored on
the `--select` test points that follow the first `--tests`, the best mean Spearman there
is chosen, and the LDS is reported on the first `--tests` only (no choice made on them).

Retrained test losses (all 1,000 test points) and trained members are cached in
benchmarks/out/lds_<model>/ (one file per seed and subset; predictions per seed, curvature
and damping), so runs with another curvature, damping or ensemble size retrain nothing;
--retrain-only SEEDS fills the retraining cache (run several at once on several cores).

    python benchmarks/lds.py --model logreg [--subsets 100] [--tests 100]
    python benchmarks/lds.py --model mlp --subsets 50 [--ensemble 1] [--damping 0.001,0.01,0.1]
                             [--curvature gauss-newton] [--retrain-only 0,1] [--predict-only]
"""

from __future__ import annotations

import argparse
import hashlib
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import infl
from infl.data import load_builtin
from infl.errors import CurvatureError
from infl.objective import Objective
from infl.train import assign, minimize, weighted_risk
from infl.grads import iter_grads
from infl.validate import lds_of_predictions, random_subsets

from task import cross_entropy, mnist_task

OUT = Path(__file__).parent / "out"


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
    """(model, objective, theta (p,), gradient max) trained on (X, y) from the initialisation of `seed` (or `warm`)."""
    model = make(seed, X.shape[1])
    obj = Objective(model, cross_entropy, l2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few subsets stop just short of tol; the gradient max is kept
        theta = minimize(obj, X, y, theta0=warm, tol=tol, max_iter=5000)
    w = torch.full((X.shape[0],), 1.0 / X.shape[0], dtype=obj.dtype)
    g = torch.func.grad(lambda t: weighted_risk(obj, t, X, y, w, 4096))(theta)
    return model, obj, theta, float(g.abs().max())


class Members:
    """The ensemble: K models trained on all the data, and their retrained test losses per subset, cached."""

    def __init__(self, model: str, K: int, X, y, Xt, yt) -> None:
        self.make, self.l2, self.solver, self.tol = SETTINGS[model]
        self.model, self.X, self.y, self.Xt, self.yt = model, X, y, Xt, yt
        self.cache = OUT / f"lds_{model}"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.fitted = [self._member(k) for k in range(K)]

    def _member(self, k: int):
        if self.model == "logreg":  # theta_hat to gradient max 1e-9, shared with the other scripts
            model = mnist_task(cache=OUT / "mnist_theta.pt").model
            obj = Objective(model, cross_entropy, self.l2)
            return model, obj, obj.theta
        path = self.cache / f"theta_seed{k}_tol{self.tol:g}.pt"
        if path.exists():
            theta = torch.load(path)
            model = self.make(k, self.X.shape[1])
            obj = Objective(model, cross_entropy, self.l2)
        else:
            t0 = time.perf_counter()
            model, obj, theta, gmax = trainer(self.make, k, self.l2, self.tol, self.X, self.y, None)
            torch.save(theta, path)
            print(f"member {k} trained in {time.perf_counter() - t0:.0f} s, gradient max {gmax:.1e}", flush=True)
        assign(model, obj, theta)
        return model, Objective(model, cross_entropy, self.l2), theta

    def retrained(self, k: int, index: np.ndarray) -> np.ndarray:
        """Member k's test losses (all test points) after retraining on the training points `index`."""
        key = hashlib.sha1(np.asarray(index, dtype=np.int64).tobytes()).hexdigest()[:16]
        path = self.cache / f"seed{k}_tol{self.tol:g}_{key}.npz"
        if path.exists():
            return np.load(path)["losses"]
        t0 = time.perf_counter()
        _, obj, theta = self.fitted[k]
        warm = theta if self.model == "logreg" else None
        _, _, theta_s, gmax = trainer(self.make, k, self.l2, self.tol, self.X[index], self.y[index], warm)
        losses = obj.losses(theta_s, self.Xt, self.yt).detach().numpy()
        np.savez(path, losses=losses, gmax=gmax)
        print(f"  seed {k}, subset {key}: {time.perf_counter() - t0:.0f} s, gradient max {gmax:.1e}", flush=True)
        return losses

    def predictions(self, rows: slice, curvature: str, damping: float, masks: np.ndarray, draw: int) -> np.ndarray | None:
        """Ensemble mean of (1/n) sum_{i in subset} I_up,loss(z_i, z_test), (m test points `rows`, s subsets).

        masks: random_subsets(n, s, 0.5, draw). One solve per subset (not per test point; H is symmetric):
        -(1/n) grad L(z_test)^T (H + damping I)^{-1} sum_{i in subset} grad L(z_i). Cached per member;
        None if a member's curvature + damping is not positive definite (CG meets negative curvature).
        """
        out, s = 0, masks.shape[0]
        for k in range(len(self.fitted)):
            stem = f"pred_seed{k}_{curvature}_d{damping:g}_{rows.start}-{rows.stop}_subsets{draw}x"
            # random_subsets(n, S, fraction, draw) begins with the S' < S subsets of the same draw
            done = [p for p in self.cache.glob(f"{stem}*.npy") if int(p.stem.rsplit("x", 1)[1]) >= s]
            P = np.load(done[0])[:, :s] if done else self._predict(k, rows, curvature, damping, masks)
            if P is None:
                return None
            np.save(self.cache / f"{stem}{s}.npy", P)
            out = out + P / len(self.fitted)
        return out

    def _predict(self, k: int, rows: slice, curvature: str, damping: float, masks: np.ndarray) -> np.ndarray | None:
        t0 = time.perf_counter()
        inf = infl.Influence(self.fitted[k][0], cross_entropy, l2=self.l2, damping=damping, solver=self.solver,
                             curvature=curvature, stationarity_tol=1e-2)
        M = torch.as_tensor(masks, dtype=torch.float64)
        try:
            inf.fit((self.X, self.y))
            B = sum(M[:, r] @ G for r, G in iter_grads(inf.objective_, self.X, self.y, 512))
            U, info = inf.solver.solve(B)
        except CurvatureError as exc:
            print(f"  member {k}, {curvature} + {damping:g} I: {exc}", flush=True)
            return None
        print(f"  member {k}, {curvature} + {damping:g} I: ||grad R||={inf.grad_norm_:.1e}, {info.method} "
              f"{info.iterations} iterations ({info.note}), {time.perf_counter() - t0:.0f} s", flush=True)
        return (-(inf.test_grads((self.Xt[rows], self.yt[rows])) @ U.T) / self.X.shape[0]).numpy()


def report(name: str, rho: np.ndarray, rows: slice) -> float:
    """Print the mean and 10/50/90th percentiles of the Spearman correlations rho of the test points `rows`."""
    q = np.nanpercentile(rho, [10, 50, 90])
    print(f"{name}: mean Spearman {np.nanmean(rho):.4f} over test points {rows.start}..{rows.stop - 1} "
          f"(10/50/90th percentiles {q[0]:.3f} / {q[1]:.3f} / {q[2]:.3f})", flush=True)
    return float(np.nanmean(rho))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SETTINGS), default="logreg")
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--tests", type=int, default=100)
    ap.add_argument("--select", type=int, default=100, help="test points after the first --tests on which to "
                    "choose among several dampings")
    ap.add_argument("--ensemble", type=int, default=1)
    ap.add_argument("--damping", default="0", help="one value, or several comma-separated to choose from")
    ap.add_argument("--target", type=int, default=0, help="average the retrained losses over the first TARGET "
                    "members only (default: all --ensemble members), to separate the two effects of ensembling")
    ap.add_argument("--curvature", choices=["hessian", "gauss-newton"], default="hessian")
    ap.add_argument("--retrain-only", metavar="SEEDS", help="fill the retraining cache for these members "
                    "(e.g. 0,2) and stop; run several at once to use several cores")
    ap.add_argument("--predict-only", action="store_true", help="compute and cache the predictions and stop")
    ap.add_argument("--reverse", action="store_true", help="with --retrain-only: the subsets in reverse order")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    split = load_builtin("mnist")
    X, y = torch.tensor(split.X_train), torch.tensor(split.y_train)
    seeds = [int(k) for k in args.retrain_only.split(",")] if args.retrain_only else list(range(args.ensemble))
    members = Members(args.model, max(seeds) + 1, X, y, torch.tensor(split.X_test), torch.tensor(split.y_test))
    masks = random_subsets(X.shape[0], args.subsets, 0.5, args.seed)
    t0 = time.perf_counter()
    for k in [] if args.predict_only else seeds:
        for mask in masks[::-1] if args.reverse else masks:
            members.retrained(k, np.flatnonzero(mask))
    print(f"{args.subsets} subset retrains x members {seeds} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    if args.retrain_only:
        return

    dampings = [float(d) for d in args.damping.split(",")]
    select = len(dampings) > 1  # predictions are made (and cached) for the held-out points either way
    rows, test, held = slice(0, args.tests + args.select), slice(0, args.tests), slice(args.tests, args.tests + args.select)
    if args.predict_only:
        for d in dampings:
            members.predictions(rows, args.curvature, d, masks, args.seed)
        return

    def retrain(index: np.ndarray) -> np.ndarray:
        return np.mean([members.retrained(k, index)[rows] for k in range(args.target or args.ensemble)], axis=0)

    results = {}
    for d in dampings:
        P = members.predictions(rows, args.curvature, d, masks, args.seed)
        if P is not None:
            results[d] = lds_of_predictions(P, masks, retrain).spearman
    name = (f"LDS {args.model}, {members.solver} on {args.curvature}, ensemble {args.ensemble} "
            f"(target: {args.target or args.ensemble} member(s)), {args.subsets} subsets")
    if select:
        for d, rho in results.items():
            report(f"  damping {d:g}, choosing on", rho[args.tests:], held)
            report(f"  damping {d:g}, reported on", rho[: args.tests], test)
        chosen = max(results, key=lambda d: np.nanmean(results[d][args.tests:]))
        report(f"{name}, damping {chosen:g} (chosen on test points {held.start}..{held.stop - 1})",
               results[chosen][: args.tests], test)
    else:
        report(f"{name}, damping {dampings[0]:g}", results[dampings[0]][: args.tests], test)


if __name__ == "__main__":
    main()
