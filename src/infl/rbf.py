"""An RBF-kernel SVM as a linear model on a fixed kernel feature map, so `infl.Influence` applies as is.

K(x, x') = exp(-gamma ||x - x'||^2). With the training points x_1..x_n as
landmarks and K = U diag(s) U^T their kernel matrix, the feature map

    phi(x) = diag(s)^{-1/2} U^T [K(x, x_1), ..., K(x, x_n)]      (r features, eigenvalues s > rtol * max s)

satisfies phi(x_i) . phi(x_j) = K(x_i, x_j) on the training set, and ||w||^2 of
f(x) = w . phi(x) + b is the RKHS norm of f (the usual SVM regulariser). The SVM is
trained on the smooth hinge (MATH.md) with l2: R = mean SmoothHinge(y f(x_i), t) +
(l2/2)(||w||^2 + b^2). Influence is then computed on theta = (w, b) with the feature
map held fixed (the landmarks are not re-chosen when a point is up-weighted).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .errors import InputError
from .frozen import check_two_classes
from .losses import hinge_terms
from .objective import positive_number


def squared_distances(X: Tensor, Y: Tensor) -> Tensor:
    """||x_i - y_j||^2 for all pairs, (a, b), clamped at 0."""
    return ((X * X).sum(1, keepdim=True) - 2 * X @ Y.T + (Y * Y).sum(1)).clamp_min(0)


def scale_gamma(X: np.ndarray | Tensor) -> float:
    """gamma = 1 / (d * Var(X)): scikit-learn's 'scale' default."""
    X = torch.as_tensor(X, dtype=torch.float64)
    return 1.0 / (X.shape[1] * float(X.var()))


class RBFFeatures(nn.Module):
    """x (b, d) -> phi(x) (b, r), the whitened kernel map on fixed landmarks (buffers, nothing trainable)."""

    def __init__(self, landmarks: Tensor, gamma: float, rtol: float = 1e-10) -> None:
        super().__init__()
        if positive_number(gamma) is None:
            raise InputError(f"the RBF kernel width gamma must be a finite number > 0, got {gamma!r}")
        self.gamma = positive_number(gamma)
        L = landmarks.detach().to(torch.float64)
        s, U = torch.linalg.eigh(torch.exp(-self.gamma * squared_distances(L, L)))
        keep = s > rtol * s.max()
        self.register_buffer("landmarks", L)
        self.register_buffer("projection", U[:, keep] / s[keep].sqrt())

    def forward(self, X: Tensor) -> Tensor:
        return torch.exp(-self.gamma * squared_distances(X, self.landmarks)) @ self.projection


def _smooth_hinge_parts(f: Tensor, y: Tensor, t: float) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, dL/df and d2L/df2 of SmoothHinge(y f, t), each (n,)."""
    u = (1 - y * f) / t
    sig = torch.sigmoid(u)
    return hinge_terms(y * f, t), -y * sig, sig * (1 - sig) / t


def rbf_svm(X: np.ndarray | Tensor, y: np.ndarray | Tensor, *, gamma: float | None = None, l2: float = 1e-3,
            t: float = 0.1, tol: float = 1e-9, max_iter: int = 100) -> nn.Sequential:
    """nn.Sequential(RBFFeatures(X), nn.Linear(r, 1)) trained on labels y in {0, 1} (or {-1, +1}).

    Minimises mean SmoothHinge(y_pm f(x_i), t) + (l2/2)||theta||^2 by Newton's method to
    max |grad| <= tol. The model's output f (b, 1) is the SVM's decision value; pass
    targets 2 y - 1 and infl.losses.make_smooth_hinge(t) to Influence.
    """
    X = torch.as_tensor(X, dtype=torch.float64)
    y = torch.as_tensor(y)
    check_two_classes(y)
    if not (math.isfinite(l2) and l2 > 0):
        raise InputError(f"the SVM's l2 must be a finite number > 0, got {l2!r}")
    y_pm = to_pm(y)
    phi = RBFFeatures(X, scale_gamma(X) if gamma is None else gamma)
    with torch.no_grad():
        Phi = phi(X)
    Pb = torch.cat([Phi, torch.ones(len(y), 1, dtype=torch.float64)], 1)
    theta = torch.zeros(Pb.shape[1], dtype=torch.float64)
    risk = lambda th: _smooth_hinge_parts(Pb @ th, y_pm, t)[0].mean() + 0.5 * l2 * th.square().sum()  # noqa: E731
    for _ in range(max_iter):
        _, d1, d2 = _smooth_hinge_parts(Pb @ theta, y_pm, t)
        g = Pb.T @ d1 / len(y) + l2 * theta
        if g.abs().max() <= tol:
            break
        H = Pb.T @ (d2[:, None] * Pb) / len(y)
        H.diagonal().add_(l2)
        step, value, size = torch.linalg.solve(H, g), risk(theta), 1.0
        while risk(theta - size * step) > value - 1e-4 * size * float(g @ step) and size > 1e-10:
            size /= 2
        if size <= 1e-10:
            break
        theta = theta - size * step
    head = nn.Linear(Pb.shape[1] - 1, 1).double()
    with torch.no_grad():
        head.weight.copy_(theta[:-1].view(1, -1))
        head.bias.copy_(theta[-1:])
    return nn.Sequential(phi, head)


def to_pm(y: np.ndarray | Tensor) -> Tensor:
    """Labels {0, 1} -> {-1., +1.} (float64); {-1, +1} are kept."""
    y = torch.as_tensor(y)
    values = set(torch.unique(y).tolist())
    if not values <= {0, 1} and not values <= {-1, 1}:
        raise InputError(f"the SVM needs two classes labelled 0/1 or -1/+1, got labels {sorted(values)[:5]}")
    return torch.where(y > 0, 1.0, -1.0).to(torch.float64)
