"""Dense float64 references, for this package's tests and for users checking their own setups.

Everything here is slow and exact: O(p^2) memory, no approximation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .objective import L2, LossFn, Objective


def dense_hessian(model: nn.Module, loss_fn: LossFn, X: Tensor, y: Tensor, l2: L2 = 0.0) -> Tensor:
    """H = grad^2 [(1/n) sum_i L(z_i) + (1/2) sum_k l2_k theta_k^2] at the model's parameters, (p, p),
    by double reverse-mode autograd (torch.autograd.functional.hessian: independent of the forward-over-reverse
    products infl uses, and unaffected by torch.func.hessian's wrong blocks through LayerNorm in torch 2.13).
    l2: a float or {parameter name: l2} as in Influence."""
    obj = Objective(model, loss_fn, l2)

    def risk(theta: Tensor) -> Tensor:
        return obj.losses(theta, X, y).mean() + 0.5 * (obj.l2 * theta.square()).sum()

    return torch.autograd.functional.hessian(risk, obj.theta.detach())


def dense_scores(model: nn.Module, loss_fn: LossFn, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
                 l2: L2 = 0.0, damping: float = 0.0) -> Tensor:
    """I_up,loss(z_i, z_test) = -grad L(z_test)^T (H + damping I)^{-1} grad L(z_i), (m, n), by dense solve."""
    obj = Objective(model, loss_fn, l2)
    eye = torch.eye(obj.p, dtype=obj.dtype, device=obj.device)
    H = dense_hessian(model, loss_fn, *train, l2) + damping * eye
    G = obj.per_example_grads(*train)
    Gt = obj.per_example_grads(*test)
    return -Gt @ torch.linalg.solve(H, G.T)


def logistic_scores(theta: Tensor, X: Tensor, y: Tensor, Xt: Tensor, yt: Tensor, l2: float) -> Tensor:
    """Binary logistic regression closed form (MATH.md), y in {-1, +1}, no bias, (m, n).

    I_up,loss(z, z_test) = -y_t y sigma(-y_t theta.x_t) sigma(-y theta.x) x_t^T H^{-1} x,
    H = (1/n) sum_i sigma(theta.x_i) sigma(-theta.x_i) x_i x_i^T + l2 I.
    """
    s = X @ theta
    eye = torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
    H = (X.T * (torch.sigmoid(s) * torch.sigmoid(-s))) @ X / X.shape[0] + l2 * eye
    coef_train = y * torch.sigmoid(-y * s)  # (n,)
    coef_test = yt * torch.sigmoid(-yt * (Xt @ theta))  # (m,)
    return -coef_test[:, None] * coef_train[None, :] * (Xt @ torch.linalg.solve(H, X.T))
