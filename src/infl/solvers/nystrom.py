"""Randomized Nystrom approximation of a PSD operator, used as a CG preconditioner
(Frangella, Tropp & Udell, 2023)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from ..operators import Operator, built_in_float32


def nystrom(op: Operator, rank: int, seed: int = 0, power: int = 1) -> tuple[Tensor, Tensor]:
    """Top eigenpairs of A ~= U^T diag(lam) U from a sketch of `rank` products,
    sharpened by `power` subspace iterations (each another `rank` products).

    Returns U (r, p) with orthonormal rows and lam (r,) descending, r <= rank
    (directions with no positive curvature are dropped).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    Omega = torch.randn(op.p, rank, generator=gen, dtype=op.dtype).to(op.device)
    Q = torch.linalg.qr(Omega).Q  # (p, r)
    for _ in range(power):
        Q = torch.linalg.qr(op.matmat(Q.T.contiguous()).T).Q
    Y = op.matmat(Q.T.contiguous()).T  # (p, r) = A Q
    nu = torch.finfo(op.dtype).eps * op.p**0.5 * Y.norm()
    Y = Y + nu * Q
    Cf, info = torch.linalg.cholesky_ex((Q.T @ Y + Y.T @ Q) / 2)
    if info.item() != 0:  # not PSD on the sketch: CG will report the negative curvature itself
        return Q.T[:0], Y.new_zeros(0)
    Bm = torch.linalg.solve_triangular(Cf, Y.T, upper=False).T  # Y C^{-T}, (p, r)
    U, S, _ = torch.linalg.svd(Bm, full_matrices=False)
    lam = S.square() - nu
    keep = lam > 0
    return U[:, keep].T.contiguous(), lam[keep]


def _captured(sketch: tuple[Tensor, Tensor]) -> tuple[float, float]:
    """The smallest and largest eigenvalue a sketch (U, lam) captured; (1, 1) for none (nothing to resolve)."""
    lam = sketch[1]
    return (float(lam[-1]), float(lam[0])) if lam.numel() else (1.0, 1.0)


class NystromPreconditioner:
    """P^{-1} r = lam_min * U^T diag(1/lam) U r + (r - U^T U r): the top `rank`
    eigenvalues of A are mapped to its smallest captured one; the rest is left alone."""

    def __init__(self, op: Operator, rank: int, seed: int = 0, power: int = 1) -> None:
        # a partial sketch only preconditions: float32 products where op allows, unless the spectrum it captures
        # reaches below what they resolve; a full one is the exact inverse
        sketch = partial(nystrom, rank=rank, seed=seed, power=power)
        U, lam = sketch(op) if rank >= op.p else built_in_float32(op, sketch, _captured)[0]
        self.U, self.lam = U.to(op.dtype), lam.to(op.dtype)  # applied in op's dtype
        self.rank = self.lam.numel()

    def __call__(self, R: Tensor) -> Tensor:
        if self.rank == 0:
            return R
        C = R @ self.U.T  # (k, r)
        return R + (C * (self.lam[-1] / self.lam - 1)) @ self.U
