"""Per-example gradients, computed in chunks so memory is bounded by the batch size."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from .inputs import batches
from .linear import LinearObjective
from .objective import Objective

DIRECTIONAL_ROWS = 128  # most rows t for which t . grad L(z_i) goes by forward mode


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



def iter_directional(obj: Objective, T: Tensor, X: Tensor, y: Tensor, batch_size: int
                     ) -> Iterator[tuple[slice, Tensor]]:
    """Yield (rows, T @ grad L(z_i)^T for i in rows), each (k, b), by forward-mode products (no gradients formed)."""
    for rows in batches(X.shape[0], batch_size):
        yield rows, obj.directional_grads(T, X[rows], y[rows])


def directional_pays(obj: Objective, X: Tensor, y: Tensor, k: int) -> bool:
    """Whether T @ grad L(z_i)^T for k rows of T is cheaper by forward mode (iter_directional) than by forming
    the b x p per-example gradients (iter_grads).

    Yes for outputs affine in theta (a closed form). Otherwise when k <= DIRECTIONAL_ROWS and each
    trainable weight is used about once per example (one example's loss costs <= 2p multiply-adds, e.g.
    dense layers), and the model supports forward-mode AD: then k forward products cost about k x p per
    example against p numbers written per example plus the same k x p multiply-adds. Convolutions and
    attention reuse their weights across positions and vectorise poorly in forward mode: gradients there.
    """
    if isinstance(obj, LinearObjective):
        return True
    if k > DIRECTIONAL_ROWS or not X.shape[0]:
        return False
    try:
        with FlopCounterMode(display=False) as counter:
            obj.losses(obj.theta, X[:1], y[:1])
        obj.directional_grads(obj.theta.new_zeros(1, obj.p), X[:1], y[:1])
    except NotImplementedError:  # an operation without forward-mode AD
        return False
    return counter.get_total_flops() / 2 <= 2 * obj.p
