"""The exact minimiser of the (non-smooth) linear SVM objective, for retraining checks.

    R(theta) = sum_i c_i * max(0, 1 - y_i theta^T x_i) + (l2/2) ||theta||^2,

c_i = 1/n for the objective of MATH.md (c_j = 0 removes point j, the others
keep 1/n); y_i in {-1, +1}; x_i includes a constant 1 when a bias is wanted
(the bias is then regularised like every other parameter, as l2 in MATH.md).

Dual: theta = (1/l2) sum_i a_i y_i x_i with 0 <= a_i <= c_i minimising
(1/(2 l2)) a^T Q a - sum_i a_i, Q_ij = y_i y_j x_i^T x_j: a box-constrained
QP without an equality constraint. Dual coordinate descent (Hsieh et al.
2008) finds the three sets (margin > 1: a = 0; margin < 1: a = c; on the
margin: 0 < a < c) and an active-set step then solves the margin equations
y_i theta^T x_i = 1 exactly, so the result satisfies the optimality
conditions to rounding error, and `kkt` certifies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class HingeFit:
    """theta (p,), dual a (n,), the certified optimality violation `kkt` and the number of passes."""

    theta: np.ndarray
    dual: np.ndarray
    kkt: float
    passes: int


def _check(X: np.ndarray, y: np.ndarray, c: np.ndarray, l2: float) -> None:
    if not l2 > 0:
        raise InputError(f"the hinge SVM needs l2 > 0 for a unique minimiser, got l2={l2!r}")
    if X.ndim != 2 or y.shape != (X.shape[0],) or c.shape != y.shape:
        raise InputError(f"expected X (n, p), y (n,) and weights (n,); got {X.shape}, {y.shape}, {c.shape}")
    if not np.all(np.isin(y, (-1, 1))):
        raise InputError("hinge SVM labels must be -1 or +1; map your two classes to them")
    if np.any(c < 0):
        raise InputError("per-point weights must be >= 0 (0 removes a point)")


def kkt_violation(X: np.ndarray, y: np.ndarray, c: np.ndarray, l2: float, a: np.ndarray) -> float:
    """Largest violation of the optimality conditions by dual a, relative to the margin scale 1.

    Conditions: a_i = 0 needs margin >= 1, a_i = c_i needs margin <= 1, 0 < a_i < c_i needs margin = 1.
    theta = (1/l2) X^T (a y) makes the subgradient of R contain 0 exactly when they hold.
    """
    margin = y * (X @ (X.T @ (a * y))) / l2
    g = margin - 1  # dual gradient
    lower, upper = a <= 0, a >= c
    v = np.where(lower, np.maximum(-g, 0), np.where(upper, np.maximum(g, 0), np.abs(g)))
    v[c == 0] = 0  # a removed point has no condition
    return float(v.max(initial=0.0))


def fit_hinge_svm(X: np.ndarray, y: np.ndarray, l2: float, weights: np.ndarray | None = None,
                  dual0: np.ndarray | None = None, tol: float = 1e-10, max_passes: int = 2000,
                  seed: int = 0) -> HingeFit:
    """argmin_theta sum_i c_i max(0, 1 - y_i theta^T x_i) + (l2/2)||theta||^2 (float64).

    weights c default to 1/n; dual0 warm-starts (e.g. the full-data dual with
    the removed point's entry set to 0). Raises if the result violates the
    optimality conditions by more than `tol` after max_passes.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    c = np.full(len(y), 1.0 / len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    _check(X, y, c, l2)
    a = np.zeros(len(y)) if dual0 is None else np.clip(np.asarray(dual0, dtype=np.float64), 0, c)
    q = np.einsum("ij,ij->i", X, X)
    rng = np.random.default_rng(seed)
    passes = 0
    for passes in range(1, max_passes + 1):
        a = _coordinate_pass(X, y, c, l2, a, q, rng.permutation(len(y)))
        if passes % 5 == 0 or passes == max_passes:
            polished = _active_set(X, y, c, l2, a)
            kkt = kkt_violation(X, y, c, l2, polished)
            if kkt <= tol:
                a = polished
                break  # otherwise keep the descent's iterate: a wrong set would be revisited in a cycle
    kkt = kkt_violation(X, y, c, l2, a)
    if kkt > tol:
        raise InputError(f"the hinge SVM did not reach its optimum in {max_passes} passes (KKT violation "
                         f"{kkt:.1e} > tol {tol:.0e}); raise max_passes or l2")
    return HingeFit(X.T @ (a * y) / l2, a, kkt, passes)


def _coordinate_pass(X: np.ndarray, y: np.ndarray, c: np.ndarray, l2: float, a: np.ndarray, q: np.ndarray,
                     order: np.ndarray) -> np.ndarray:
    """One pass of dual coordinate descent: each a_i minimised exactly with the others fixed."""
    a = a.copy()
    w = X.T @ (a * y)  # l2 * theta
    for i in order:
        if q[i] == 0:
            continue
        g = y[i] * (X[i] @ w) / l2 - 1
        new = min(max(a[i] - g * l2 / q[i], 0.0), c[i])
        if new != a[i]:
            w += (new - a[i]) * y[i] * X[i]
            a[i] = new
    return a


def _active_set(X: np.ndarray, y: np.ndarray, c: np.ndarray, l2: float, a: np.ndarray,
                slack: float = 1e-12) -> np.ndarray:
    """Solve the margin equations exactly on the current free set; keep a if the result is infeasible."""
    scale = np.maximum(c, slack)
    free = (a > slack * scale) & (a < c - slack * scale)
    upper = a >= c - slack * scale
    if not free.any():
        return np.where(upper, c, 0.0)
    Xf = X[free] * y[free, None]
    base = X[upper].T @ (c[upper] * y[upper])  # l2 * theta from points at their bound c
    rhs = l2 * np.ones(free.sum()) - Xf @ base
    af = np.linalg.lstsq(Xf @ Xf.T, rhs, rcond=None)[0]
    if np.any(af < 0) or np.any(af > c[free]):
        return a
    out = np.where(upper, c, 0.0)
    out[free] = af
    return out


def retrain_hinge_without(X: np.ndarray, y: np.ndarray, l2: float, full: HingeFit,
                          indices: list[int] | np.ndarray, tol: float = 1e-10) -> dict[int, np.ndarray]:
    """theta_{-j} (p,) for each j: point j's weight set to 0, the others keep 1/n (MATH.md).

    Each fit is warm-started from the full-data dual with a_j = 0 and certified by its KKT violation.
    """
    n, out = len(y), {}
    for j in map(int, indices):
        c = np.full(n, 1.0 / n)
        c[j] = 0
        out[j] = fit_hinge_svm(X, y, l2, weights=c, dual0=np.where(c > 0, full.dual, 0.0), tol=tol).theta
    return out
