"""Per-example gradients, computed in chunks so memory is bounded by the batch size."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .inputs import batches
from .linear import LinearObjective
from .objective import Objective, example_failed


@contextmanager
def naming_the_row(obj: Objective, X: Tensor, y: Tensor, start: int) -> Iterator[None]:
    """An error of the loss on the chunk (X, y), rows start.. of the data, becomes an InputError naming the first
    example whose loss fails on its own, with that failure's message; other errors pass unchanged."""
    try:
        yield
    except (IndexError, ValueError, RuntimeError) as exc:
        if isinstance(exc, NotImplementedError):
            raise
        found = obj.first_failure(X, y)
        if found is None:
            raise
        raise example_failed(start + found[0], found[1]) from exc


def iter_grads(obj: Objective, X: Tensor, y: Tensor, batch_size: int, first: int = 0
               ) -> Iterator[tuple[slice, Tensor]]:
    """Yield (rows, grad L(z_i) for i in rows), each (b, p); unregularised per-example gradients. first: the
    number of X's first row in the user's data (errors name rows by it)."""
    for rows in batches(X.shape[0], batch_size):
        with naming_the_row(obj, X[rows], y[rows], first + rows.start):
            g = obj.per_example_grads(X[rows], y[rows])
        yield rows, g


def stack_grads(obj: Objective, X: Tensor, y: Tensor, batch_size: int, first: int = 0) -> Tensor:
    """All per-example gradients, (n, p). Holds n * p numbers: use iter_grads to stream."""
    out = torch.empty(X.shape[0], obj.p, dtype=obj.dtype, device=obj.device)
    for rows, g in iter_grads(obj, X, y, batch_size, first):
        out[rows] = g
    return out


def sum_grad(obj: Objective, X: Tensor, y: Tensor, batch_size: int, first: int = 0) -> Tensor:
    """sum_i grad L(z_i, theta_hat) over (X, y), shape (p,); no 1/n, no l2. first: as for iter_grads."""
    total = torch.zeros(obj.p, dtype=obj.dtype, device=obj.device)
    for rows in batches(X.shape[0], batch_size):
        with naming_the_row(obj, X[rows], y[rows], first + rows.start):
            total += torch.func.grad(obj.loss_sum)(obj.theta, X[rows], y[rows])
    return total


def iter_directional(obj: Objective, T: Tensor, X: Tensor, y: Tensor, batch_size: int, first: int = 0
                     ) -> Iterator[tuple[slice, Tensor]]:
    """Yield (rows, T @ grad L(z_i)^T for i in rows), each (k, b), by forward-mode products (no gradients formed);
    first: as for iter_grads."""
    for rows in batches(X.shape[0], batch_size):
        with naming_the_row(obj, X[rows], y[rows], first + rows.start):
            block = obj.directional_grads(T, X[rows], y[rows])
        yield rows, block


def directional_pays(obj: Objective, X: Tensor, y: Tensor, k: int) -> bool:
    """Whether T @ grad L(z_i)^T for k rows of T is cheaper by forward mode (iter_directional) than by forming
    the b x p per-example gradients (iter_grads).

    Yes for outputs affine in theta (a closed form). Otherwise measured on one example's loss: its
    multiply-adds F (matrix products, convolutions, attention) and the numbers N written by every other
    operation that is not a view. Forward mode redoes both for each of the k rows, gradients write p numbers
    per example and then take k x p multiply-adds. So forward mode when F <= 2p (each weight used about
    once per example, as in dense layers; convolutions reuse theirs at every position and vectorise poorly
    in forward mode) and 2k x N <= p (the k rows' tangents hold at most half a gradient, so memory stays
    within the b x p gradient chunk; the 2 leaves room for the extra work of forward-mode formulas, e.g.
    LayerNorm's; benchmarks/scoring.py), and the model supports forward-mode AD (a probe on one example).
    """
    if isinstance(obj, LinearObjective):
        return True
    if not X.shape[0]:
        return False
    try:
        with FlopCounterMode(display=False) as flops, _NumbersWritten() as written:
            obj.losses(obj.theta, X[:1], y[:1])
        if flops.get_total_flops() / 2 > 2 * obj.p or 2 * k * written.total > obj.p:
            return False
        obj.directional_grads(obj.theta.new_zeros(1, obj.p), X[:1], y[:1])
    except Exception:  # e.g. an operation without forward-mode AD: gradients, which raise their own errors
        return False
    return True


class _NumbersWritten(TorchDispatchMode):
    """Counts the numbers in the outputs of every operation run under it, views (which write none) excepted."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (the dispatch protocol)
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            self.total += sum(t.numel() for t in (out if isinstance(out, (tuple, list)) else (out,))
                              if isinstance(t, Tensor))
        return out
