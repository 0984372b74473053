"""Per-example gradients, computed in chunks so memory is bounded by the batch size."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from .inputs import batches
from .objective import Objective


def iter_grads(obj: Objective, X: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[slice, Tensor]]:
    """Yield (rows, grad L(z_i) for i in rows), each (b, p); unregularised per-example gradients."""
    for rows in batches(X.shape[0], batch_size):
        yield rows, obj.per_example_grads(X[rows], y[rows])


def stack_grads(obj: Objective, X: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """All per-example gradients, (n, p). Holds n * p numbers: use iter_grads to stream."""
    out = torch.empty(X.shape[0], obj.p, dtype=obj.dtype, device=obj.device)
    for rows, g in iter_grads(obj, X, y, batch_size):
        out[rows] = g
    return out


def sum_grad(obj: Objective, X: Tensor, y: Tensor, batch_size: int) -> Tensor:
    """sum_i grad L(z_i, theta_hat) over (X, y), shape (p,); no 1/n, no l2."""
    total = torch.zeros(obj.p, dtype=obj.dtype, device=obj.device)
    for rows in batches(X.shape[0], batch_size):
        total += torch.func.grad(obj.loss_sum)(obj.theta, X[rows], y[rows])
    return total

