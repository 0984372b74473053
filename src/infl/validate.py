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

from .influence import Influence
from .train import minimize


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


def correlations(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(Pearson R, Spearman rho) of two 1-D arrays."""
    return float(stats.pearsonr(predicted, actual)[0]), float(stats.spearmanr(predicted, actual)[0])


def leave_one_out(inf: Influence, test: Any, train_indices: Sequence[int],
                  retrain: Callable[[Influence, int], Tensor] = retrain_without,
                  progress: Callable[[Any], Any] = lambda it: it) -> LeaveOneOut:
    """Retrain without each training index and compare with the influence prediction.

    `retrain(inf, j)` returns theta_{-j} (p,); the default is the exact
    convex protocol (warm start, tight convergence). `progress` wraps the
    loop over indices (e.g. tqdm).
    """
    X, y = inf._test_tensors(test)
    index = [int(j) for j in train_indices]
    predicted = -inf.scores(test)[:, index].cpu().numpy() / inf.n_train
    obj = inf.objective_
    base = obj.losses(obj.theta, X, y).detach()
    actual = np.empty_like(predicted)
    for col, j in enumerate(progress(index)):
        theta = retrain(inf, j)
        actual[:, col] = (obj.losses(theta, X, y).detach() - base).cpu().numpy()
    pairs = [correlations(p, a) for p, a in zip(predicted, actual)]
    return LeaveOneOut(np.asarray(index), predicted, actual,
                       np.array([p for p, _ in pairs]), np.array([s for _, s in pairs]))
