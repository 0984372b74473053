"""Leave-one-out retraining: the paper's own test of influence (MATH.md).

Removing training point j (weight 0, the others keep 1/n) is the
epsilon = -1/n perturbation, so

    L(z_test, theta_hat_{-j}) - L(z_test, theta_hat) ~= -(1/n) * I_up,loss(z_j, z_test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from torch.func import grad, vmap

from .errors import InflError
from .influence import Influence
from .solvers import Exact
from .train import minimize, weighted_risk


@dataclass(frozen=True)
class LeaveOneOut:
    """Predicted and actual test-loss changes from removing each of k training points, per test point.

    indices (k,); predicted, actual (m, k): predicted = -(1/n) I_up,loss,
    actual = retrained minus original test loss; pearson, spearman (m,).
    """

    indices: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    pearson: np.ndarray
    spearman: np.ndarray


def retrain_without(inf: Influence, j: int, tol: float = 1e-10, max_iter: int = 1000) -> Tensor:
    """theta_hat_{-j}: argmin of R with point j's weight set to 0, by L-BFGS warm-started at theta_hat."""
    obj, X, y = inf.objective_, inf.X_train_, inf.y_train_
    w = torch.full((X.shape[0],), 1.0 / X.shape[0], dtype=obj.dtype, device=obj.device)
    w[j] = 0
    return minimize(obj, X, y, weights=w, theta0=obj.theta, tol=tol, max_iter=max_iter)


def retrain_all(inf: Influence, indices: Sequence[int], tol: float = 1e-10, max_iter: int = 50,
                done: Callable[[int], object] = lambda count: None) -> dict[int, Tensor]:
    """theta_hat_{-j} for every j in `indices`, all at once: {j: theta (p,)}.

    Warm-started at theta_hat, each row iterates theta <- theta - H^{-1} grad R_{-j}(theta)
    (Newton steps with the Hessian fixed at theta_hat, factored once) until the largest
    entry of grad R_{-j} is <= tol: the fixed point is the exact minimiser, H only
    speeds the way there. Rows short of tol after max_iter, or a curvature too large
    to factor, fall back to L-BFGS (retrain_without). done(count) reports progress.
    """
    solver = inf.solver if isinstance(inf.solver, Exact) else _try_exact(inf)
    pending, out = [int(j) for j in indices], {}
    if solver is not None:
        obj, X, y = inf.objective_, inf.X_train_, inf.y_train_
        n = X.shape[0]
        W = torch.full((len(pending), n), 1.0 / n, dtype=obj.dtype, device=obj.device)
        W[torch.arange(len(pending)), torch.as_tensor(pending)] = 0
        Theta = obj.theta.expand(len(pending), -1).clone()
        grads = vmap(grad(lambda theta, w: weighted_risk(obj, theta, X, y, w, inf.batch_size)))
        active = torch.arange(len(pending))
        for _ in range(max_iter):
            G = grads(Theta[active], W[active])
            ok = (G.abs().amax(1) <= tol).cpu()
            out.update({pending[r]: Theta[r].clone() for r in active[ok].tolist()})
            done(int(ok.sum()))
            active, G = active[~ok], G[~ok]
            if not active.numel():
                break
            Theta[active] -= solver.solve(G)[0]
        pending = [pending[r] for r in active.tolist()]
    for j in pending:
        out[j] = retrain_without(inf, j, tol=tol)
        done(1)
    return out


def _try_exact(inf: Influence) -> Exact | None:
    try:
        return Exact().fit(inf.curvature_)
    except InflError:
        return None


def correlations(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(Pearson R, Spearman rho) of two 1-D arrays."""
    return float(stats.pearsonr(predicted, actual)[0]), float(stats.spearmanr(predicted, actual)[0])


def leave_one_out(inf: Influence, test: Any, train_indices: Sequence[int],
                  retrain: Callable[[Influence, Sequence[int]], dict[int, Tensor]] = retrain_all) -> LeaveOneOut:
    """Retrain without each training index and compare with the influence prediction.

    `retrain(inf, indices)` returns {j: theta_{-j}}; the default, retrain_all,
    is the exact convex protocol (warm start, tight convergence). Wrap it
    to add progress, or to retrain a non-convex model your own way.
    """
    X, y = inf.test_tensors(test)
    index = [int(j) for j in train_indices]
    predicted = -inf.scores(test)[:, index].cpu().numpy() / inf.n_train
    obj = inf.objective_
    base = obj.losses(obj.theta, X, y).detach()
    actual = np.empty_like(predicted)
    thetas = retrain(inf, index)
    for col, j in enumerate(index):
        actual[:, col] = (obj.losses(thetas[j], X, y).detach() - base).cpu().numpy()
    pairs = [correlations(p, a) for p, a in zip(predicted, actual)]
    return LeaveOneOut(np.asarray(index), predicted, actual,
                       np.array([p for p, _ in pairs]), np.array([s for _, s in pairs]))
