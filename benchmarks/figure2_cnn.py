"""Reproduce the paper's Figure 2 (right) on the built-in MNIST: a small non-convex CNN, not trained to convergence.

Model: a tanh CNN with 2,654 parameters (conv 5x5/2 1->6, conv 5x5/2 6->8, linear
128->10), trained on the 4,000 training points with mini-batch Adam for a fixed
number of epochs, then (--polish) full-batch L-BFGS until the gradient's largest entry
is below 1e-3, to theta-tilde (l2 = 1e-3 in the objective; not a stationary point;
without the polish the Hessian has eigenvalues below -0.01). Influence at theta-tilde
with damping lambda = 0.01 (the paper's setting), per solver and curvature. Actual: for each test point, the 100 training points with the
largest |influence| (exact, on the damped Hessian) are removed one at a time and the model
is retrained from theta-tilde on R_w(theta) + (lambda/2)||theta - theta-tilde||^2, the
retraining that damped influence approximates when theta-tilde is not a minimum (a
proximal term, as implicit in warm-started training for a limited number of steps),
to gradient max 1e-8 by Newton steps preconditioned with the exact damped Hessian, all
rows at once (infl.validate.newton_steps). The same retraining on the full
training set gives the baseline, so actual = L(z_test, theta_{-j}) - L(z_test, theta_full)
and the drift of continued training cancels. Predicted: -(1/n) I_up,loss. Prints
Pearson R and Spearman rho per solver; --proximal 0 retrains on R_w alone for --steps;
--extra-tests K scores K more wrong test points (exact solver) on the rows already retrained.
Retrained rows are kept in --out, 17 at a time, so an interrupted run resumes.

    python benchmarks/figure2_cnn.py [--tests 1] [--top 100] [--steps 300] [--damping 0.01] [--proximal 0.01]
                                     [--extra-tests 0] [--n-train 4000]
"""

from __future__ import annotations

import argparse
import time
import zlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

import infl
from infl.data import load_builtin
from infl.errors import InflError
from infl.objective import Objective
from infl.train import assign, minimize
from infl.validate import correlations, newton_steps, removal_weights

from task import cross_entropy

L2 = 1e-3
CHUNK, TOL = 17, 1e-8  # retraining: rows per newton_steps call, gradient max to stop at
SETTINGS = {  # label: (curvature, solver); EK-FAC approximates the Gauss-Newton matrix (GGN) whatever the curvature
    "exact-ggn": ("gauss-newton", "exact"),
    "ekfac": ("gauss-newton", "ekfac"),
    "cg-ggn": ("gauss-newton", "cg"),
    "cg": ("hessian", "cg"),
    "lissa": ("hessian", "lissa"),
    "arnoldi": ("hessian", "arnoldi"),
}  # "exact" (the dense damped Hessian, formed from p products) always runs: the retraining needs it


class SmallCNN(nn.Module):
    """784 pixels -> 10 logits; tanh; 2,654 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, stride=2), nn.Tanh(), nn.Conv2d(6, 8, 5, stride=2), nn.Tanh())
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 28, 28)).flatten(1))


def train_adam(X: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> SmallCNN:
    """theta-tilde: mini-batch (100) Adam, lr 1e-3, on mean cross-entropy + (l2/2)||theta||^2."""
    torch.manual_seed(seed)
    model = SmallCNN().double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in tqdm(range(epochs), desc="training theta-tilde (Adam)"):
        for rows in torch.randperm(X.shape[0]).split(100):
            opt.zero_grad()
            reg = sum(p.square().sum() for p in model.parameters())
            (cross_entropy(model(X[rows]), y[rows]).mean() + 0.5 * L2 * reg).backward()
            opt.step()
    return model


def retrain(step: infl.Influence, W: torch.Tensor, proximal: float, steps: int, folder: Path
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Theta (rows, p) and converged (rows,): newton_steps on each row of example weights W, CHUNK rows at a
    time; each chunk is saved in `folder`, so an interrupted run resumes where it stopped."""
    folder.mkdir(parents=True, exist_ok=True)
    Theta = torch.empty(len(W), step.objective_.p, dtype=torch.float64)
    converged = torch.zeros(len(W), dtype=torch.bool)
    t0, loaded = time.perf_counter(), 0
    for start in tqdm(range(0, len(W), CHUNK), desc=f"retraining (proximal {proximal:g}, <= {steps} steps), "
                                                    f"chunks of {CHUNK} rows"):
        rows, path = slice(start, start + CHUNK), folder / f"rows_{start}.pt"
        if path.exists():
            Theta[rows], converged[rows] = torch.load(path)
            loaded += len(W[rows])
            continue
        Theta[rows], converged[rows] = newton_steps(step, W[rows], step.solver, tol=TOL, max_iter=steps,
                                                    proximal=proximal, warn_diverged=False)  # counted below
        torch.save((Theta[rows], converged[rows]), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # a run killed while saving leaves no half-written chunk
    print(f"{len(W) - loaded} rows retrained in {time.perf_counter() - t0:.0f} s, {loaded} loaded from {folder}; "
          f"{int(converged.sum())} of {len(W)} reached gradient max {TOL:g} within {steps} steps", flush=True)
    return Theta, converged


def actual_change(obj: Objective, Theta: torch.Tensor, test: tuple) -> np.ndarray:
    """L(z_test, theta_row) - L(z_test, theta_full) for every retrained row after the first (the full-set
    baseline): (rows - 1, tests)."""
    losses = torch.stack([obj.losses(t, *test) for t in Theta]).detach().numpy()
    return losses[1:] - losses[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", type=int, default=1, help="test points: the first the model gets wrong")
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--steps", type=int, default=300, help="most retraining steps from theta-tilde")
    ap.add_argument("--proximal", type=float, default=None, help="retraining's proximal weight (default: damping)")
    ap.add_argument("--damping", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--polish", type=float, default=1e-3,
                    help="then full-batch L-BFGS to this gradient max (0: Adam's theta-tilde as it is)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solvers", default=",".join(SETTINGS))
    ap.add_argument("--extra-tests", type=int, default=0,
                    help="also score the next K wrong test points (exact solver) on the same retrained rows")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    ap.add_argument("--n-train", type=int, default=4000, help="the first N training points (fewer: a quick check)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    split = load_builtin("mnist")
    X, y = torch.tensor(split.X_train[: args.n_train]), torch.tensor(split.y_train[: args.n_train])
    Xt, yt = torch.tensor(split.X_test), torch.tensor(split.y_test)
    n = X.shape[0]

    cache = args.out / f"cnn_theta_e{args.epochs}_s{args.seed}{'' if n == 4000 else f'_n{n}'}.pt"
    model = SmallCNN().double()
    obj = Objective(model, cross_entropy, L2)
    if cache.exists():
        assign(model, obj, torch.load(cache))
    else:
        model = train_adam(X, y, args.epochs, args.seed)
        obj = Objective(model, cross_entropy, L2)
        torch.save(obj.theta, cache)
    if args.polish > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assign(model, obj, minimize(obj, X, y, tol=args.polish, max_iter=300))
    with torch.no_grad():
        wrong = (model(Xt).argmax(1) != yt).nonzero().squeeze(1)
        print(f"CNN p = {obj.p}, test accuracy {1 - len(wrong) / len(yt):.4f}", flush=True)
    tests = wrong[: args.tests].tolist()
    test = (Xt[tests], yt[tests])

    # the dense damped Hessian: the exact solver, the ranking, and the retraining's preconditioner (with the damped
    # GGN the proximal steps do not converge where H has small or negative eigenvalues); p products to form
    t0 = time.perf_counter()
    step = infl.Influence(model, cross_entropy, l2=L2, damping=args.damping, solver="exact",
                          stationarity_tol=float("inf")).fit((X, y))
    scores, grad_norm = {"exact": step.scores(test).numpy()}, step.grad_norm_
    print(f"{'exact':>11s}: {time.perf_counter() - t0:6.1f} s  ({step.info.note})", flush=True)
    for label in args.solvers.split(","):
        if label == "exact":
            continue  # done above
        if label not in SETTINGS:
            raise SystemExit(f"unknown solver {label!r}; choose from exact, {', '.join(SETTINGS)}")
        curvature, solver = SETTINGS[label]
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # theta-tilde is not stationary, on purpose
                inf = infl.Influence(model, cross_entropy, l2=L2, damping=args.damping, solver=solver,
                                     curvature=curvature).fit((X, y))
                scores[label] = inf.scores(test).numpy()
        except InflError as err:
            print(f"{label:>11s}: refused: {err}", flush=True)
            continue
        grad_norm = inf.grad_norm_
        print(f"{label:>11s}: {time.perf_counter() - t0:6.1f} s  ({inf.info.note})", flush=True)
    print(f"||grad R(theta-tilde)|| = {grad_norm:.3g} (not a stationary point)")

    ranker = "exact"
    chosen = [np.argsort(-np.abs(row))[: args.top] for row in scores[ranker]]
    union = np.unique(np.concatenate(chosen))
    W = removal_weights(n, union, baseline=True)
    proximal = args.damping if args.proximal is None else args.proximal
    key = (f"n{n}_d{args.damping:g}_prox{proximal:g}_st{args.steps}_tol{TOL:g}_theta"
           f"{zlib.crc32(obj.theta.detach().numpy().tobytes()):08x}_rows{zlib.crc32(union.tobytes()):08x}")
    Theta, converged = retrain(step, W, proximal, args.steps, args.out / f"fig2cnn_retrain_{key}")
    actual = actual_change(obj, Theta, test)
    col = {int(j): r for r, j in enumerate(union)}

    print(f"\nFigure 2 (right): MNIST tanh CNN (p = {obj.p}), n = {n}, l2 = {L2}, damping {args.damping}, "
          f"{args.epochs} epochs of Adam; top {args.top} |influence| ({ranker}) per test point; "
          f"retraining with proximal weight {proximal:g}")
    print(f"{'test':>6s} {'solver':>11s} {'Pearson':>8s} {'Spearman':>8s}")
    summary = {label: [] for label in scores}
    for t, (ti, idx) in enumerate(zip(tests, chosen)):
        act = actual[[col[int(j)] for j in idx], t]
        for label in scores:
            r, rho = correlations(-scores[label][t, idx] / n, act)
            summary[label].append(r)
            print(f"{ti:6d} {label:>11s} {r:8.4f} {rho:8.4f}")
        if t == 0:
            from infl.report import figure_loo
            figure_loo(-scores[ranker][t, idx] / n, act, args.out / "figure2_right.png")
    for label, rs in summary.items():
        print(f"mean Pearson R {label:>11s}: {np.mean(rs):.4f}")
    if args.extra_tests:
        extra(step, obj, Theta, union, (Xt[wrong[args.tests:args.tests + args.extra_tests]],
                                         yt[wrong[args.tests:args.tests + args.extra_tests]]), n)


def extra(step: infl.Influence, obj: Objective, Theta: torch.Tensor, union: np.ndarray, test: tuple, n: int) -> None:
    """Predicted (exact, damped Hessian) against actual for more test points, on the rows already retrained
    (chosen by the --tests points' influence, so not these points' own top)."""
    predicted = -step.scores(test).numpy()[:, union] / n  # (tests, rows)
    actual = actual_change(obj, Theta, test).T
    rs = [correlations(p, a) for p, a in zip(predicted, actual)]
    print(f"\n{len(rs)} more wrong test points, exact solver, on the same {len(union)} retrained rows: Pearson "
          f"{' '.join(f'{r:.3f}' for r, _ in rs)}; mean Pearson {np.mean([r for r, _ in rs]):.4f}, "
          f"Spearman {np.mean([rho for _, rho in rs]):.4f}")


if __name__ == "__main__":
    main()
