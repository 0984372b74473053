"""Cheap spectral estimates of an operator."""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import Operator
from .base import itemsize
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


BOTTOM_BASIS = 100  # Lanczos vectors held while estimating the smallest eigenvalue
BOTTOM_ITEM = "smallest-eigenvalue estimate"  # how footprints name it


def bottom_footprint(op: Operator) -> dict[str, int]:
    """Bytes held while smallest_eigenvalue runs (where a solver's floor is unknown), as a footprint item."""
    return {f"{BOTTOM_ITEM} where the floor is unknown (Lanczos basis {BOTTOM_BASIS} x {op.p}), during fit":
            (BOTTOM_BASIS + 2) * op.p * itemsize(op)}


def smallest_eigenvalue(op: Operator, c: float, seed: int = 0) -> tuple[float, float]:
    """A's smallest eigenvalue estimated from above (a Ritz value) by Lanczos on c I - A, c about A's largest
    eigenvalue (at most 200 products: a basis of 100, up to 50 thick restarts), and the Ritz pair's residual
    ||A u - lam u||: some eigenvalue of A lies within it of the estimate, and a residual far below the estimate
    means the estimate has settled (Krylov methods cannot certify that no smaller eigenvalue exists)."""
    shifted = _Reflected(op, c)
    lam, U, _ = top_eigenpairs(shifted, 1, tol=1e-8, block=1, max_dim=BOTTOM_BASIS, seed=seed, max_restarts=50)
    estimate = c - float(lam[0])
    return estimate, float((op.matmat(U) - estimate * U).norm())
