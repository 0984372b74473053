"""from_sklearn against scikit-learn's own leave-one-out refits, one row per estimator.

For each estimator: fit it tightly on built-in data, take the held-out point
of highest loss, and refit `sklearn.base.clone(est)` without each of the
`--top` training points of largest |I_up,loss| plus `--random` others. Prints
Pearson R and Spearman rho between the predicted change in test loss,
-(1/n) I_up,loss, and the actual change (the same loss L, infl.sklearn's
table), the fitted slope, and the seconds from_sklearn took (after a
warm-up call).

    python benchmarks/sklearn_loo.py [--top 30] [--random 10] [--mnist-n 1000] [--mnist-c 0.1] [--only TEXT]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
from sklearn.svm import LinearSVC

from infl.data import load_builtin
from infl.sklearn import DEFAULT_HINGE_T, from_sklearn
from infl.validate import correlations


def standardised(X: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return (X - ref.mean(0)) / ref.std(0).clip(1e-12)


def datasets(mnist_n: int) -> dict[str, tuple]:
    Xb, yb = load_breast_cancer(return_X_y=True)
    Xb = standardised(Xb, Xb[:450])
    Xd, yd = load_digits(return_X_y=True)
    Xr, yr = load_diabetes(return_X_y=True)
    m = load_builtin("mnist", n_train=mnist_n)
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    return {"breast_cancer": (Xb[:450], yb[:450], Xb[450:], yb[450:]),
            "digits": (Xd[:1200] / 16, yd[:1200], Xd[1200:] / 16, yd[1200:]),
            "diabetes": (Xr[:350], yr[:350], Xr[350:], yr[350:]),
            "mnist": (flat(m.X_train), m.y_train, flat(m.X_test), m.y_test)}


def cases(t: float, mnist_c: float) -> list[tuple[str, str, object, dict]]:
    tight = dict(tol=1e-12, max_iter=100_000)
    svc = dict(tol=1e-9, max_iter=100_000)  # liblinear's dual solver stops short of 1e-12
    return [
        ("LogisticRegression binary", "breast_cancer", LogisticRegression(C=0.05, **tight), {}),
        ("LogisticRegression binary liblinear", "breast_cancer",
         LogisticRegression(solver="liblinear", C=0.05, intercept_scaling=3.0, **tight), {}),
        ("LogisticRegression multinomial", "digits", LogisticRegression(C=0.1, **tight), {}),
        (f"LogisticRegression multinomial, C={mnist_c:g}", "mnist",
         LogisticRegression(C=mnist_c, tol=1e-10, max_iter=10_000), {}),
        ("Ridge", "diabetes", Ridge(alpha=0.1), {}),
        ("LinearSVC squared_hinge", "breast_cancer", LinearSVC(C=0.05, **svc), {}),
        (f"LinearSVC hinge, t={t:g}", "breast_cancer", LinearSVC(C=0.05, loss="hinge", **svc), {"hinge_t": t}),
        (f"SGDClassifier hinge, t={t:g}", "breast_cancer",
         SGDClassifier(alpha=0.01, random_state=0, tol=1e-9, max_iter=10_000), {"hinge_t": t}),
    ]


def one(est, data, top: int, random: int, seed: int, options: dict) -> tuple[float, float, float, float]:
    X, y, Xt, yt = data
    est.fit(X, y)
    start = time.perf_counter()
    inf = from_sklearn(est, X, y, **options)
    seconds = time.perf_counter() - start
    i = int(np.argmax(inf.losses_of(est, (Xt, yt))))
    test = (Xt[i:i + 1], yt[i:i + 1])
    scores = inf.scores(test)[0].numpy()
    order = np.argsort(-np.abs(scores))
    rest = np.random.default_rng(seed).choice(order[top:], size=random, replace=False)
    index = np.concatenate([order[:top], rest])
    base = inf.losses_of(est, test)[0]
    actual = np.array([inf.losses_of(clone(est).fit(np.delete(X, j, 0), np.delete(y, j, 0)), test)[0] - base
                       for j in index])
    predicted = -scores[index] / len(y)
    r, rho = correlations(predicted, actual)
    if isinstance(est, SGDClassifier):
        print(f"  {type(est).__name__}: mean |test-loss change| of leave-one-out refits "
              f"{np.abs(actual).mean():.3g}; of refits on all the data with random_state 1..4 "
              f"{np.mean([abs(inf.losses_of(clone(est).set_params(random_state=s).fit(X, y), test)[0] - base) for s in range(1, 5)]):.3g}")
    return r, rho, float(np.polyfit(predicted, actual, 1)[0]), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--mnist-n", type=int, default=1000)
    ap.add_argument("--mnist-c", type=float, default=0.1)
    ap.add_argument("--hinge-t", type=float, default=DEFAULT_HINGE_T)
    ap.add_argument("--only", default="", help="run the rows whose name or data set contains this text")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = datasets(args.mnist_n)
    X, y = data["breast_cancer"][0][:50], data["breast_cancer"][1][:50]
    from_sklearn(LogisticRegression().fit(X, y), X, y)  # warm-up: the first call pays torch.func's set-up
    print(f"{'estimator':40s} {'data':14s} {'n':>5s} {'Pearson R':>9s} {'Spearman':>9s} {'slope':>6s} {'fit s':>6s}")
    for name, key, est, options in cases(args.hinge_t, args.mnist_c):
        if args.only and args.only not in name and args.only != key:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            r, rho, slope, seconds = one(est, data[key], args.top, args.random, args.seed, options)
        print(f"{name:40s} {key:14s} {len(data[key][1]):5d} {r:9.4f} {rho:9.4f} {slope:6.2f} {seconds:6.2f}", flush=True)


if __name__ == "__main__":
    main()
