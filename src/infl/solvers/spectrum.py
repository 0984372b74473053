"""Cheap spectral estimates of an operator."""

from __future__ import annotations

import torch

from torch import Tensor

from ..operators import Operator
from .lanczos import top_eigenpairs


def top_eigenvalue(op: Operator, iters: int = 30, seed: int = 0, rtol: float = 1e-3) -> float:
    """Largest |eigenvalue| of A by power iteration (stops once it changes by < rtol)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(1, op.p, generator=gen, dtype=op.dtype).to(op.device)
    v /= v.norm()
    value = 0.0
    for _ in range(iters):
        w = op.matmat(v)
        new = float(w.norm())
        if new == 0:
            return 0.0
        v = w / new
        if abs(new - value) <= rtol * new:
            return new
        value = new
    return value


class _Reflected(Operator):
    """c I - A: its top eigenvalue is c - A's smallest."""

    def __init__(self, op: Operator, c: float) -> None:
        self.op, self.c = op, c
        self.p, self.dtype, self.device, self.name = op.p, op.dtype, op.device, f"{c:g} I - {op.name}"

    def matmat(self, V: Tensor) -> Tensor:
        return self.c * V - self.op.matmat(V)


def smallest_eigenvalue(op: Operator, c: float, seed: int = 0) -> float:
    """A's smallest eigenvalue, estimated from above (a Ritz value) by block Lanczos on c I - A, c about A's
    largest eigenvalue: at most about 100 products (4 per block, a basis of 48, up to 8 restarts)."""
    lam, _, _ = top_eigenpairs(_Reflected(op, c), 1, tol=1e-4, block=4, max_dim=48, seed=seed, max_restarts=8)
    return c - float(lam[0])
