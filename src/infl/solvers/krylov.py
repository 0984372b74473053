"""Conjugate gradients on many right-hand sides at once, and a few steps of it to refine an approximate inverse."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..errors import CurvatureError, InputError
from ..operators import Operator
from .base import SolveInfo

MatMat = Callable[[Tensor], Tensor]


def cg(matmat: MatMat, B: Tensor, *, tol: float = 1e-6, max_iter: int = 1000,
       precond: MatMat | None = None) -> tuple[Tensor, SolveInfo]:
    """Solve A x = b for each row b of B (k, p) by (preconditioned) conjugate gradients from x = 0.

    matmat: rows -> A @ rows for symmetric positive definite A. Each row
    runs its own CG recurrence; a row stops once ||b - A x|| <= tol * ||b||.
    Raises CurvatureError when a search direction has p^T A p <= 0 (A is
    not positive definite). Returns X (k, p) and SolveInfo.
    """
    if not tol > 0 or max_iter < 0:
        raise InputError(f"cg needs tol > 0 and max_iter >= 0, got tol={tol}, max_iter={max_iter}")
    M = precond or (lambda R: R)
    X = torch.zeros_like(B)
    R = B.clone()
    bnorm = B.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)
    active = torch.nonzero(R.norm(dim=1) > tol * bnorm).squeeze(1)
    Ra = R[active]  # the active rows' residuals; X and R are updated in place by row index
    Z = M(Ra)
    P = Z.clone()
    rz = (Ra * Z).sum(1)
    it = 0
    while active.numel() and it < max_iter:
        AP = matmat(P)
        pAp = (P * AP).sum(1)
        if (pAp <= 0).any():
            raise CurvatureError(
                f"conjugate gradients met negative curvature (p^T A p = {pAp.min().item():.3g}) at iteration "
                f"{it + 1}: the operator is not positive definite. Add damping, or use curvature='gauss-newton'"
            )
        alpha = (rz / pAp)[:, None]
        X.index_add_(0, active, alpha * P)
        R.index_add_(0, active, -alpha * AP)
        it += 1
        Ra = R[active]
        keep = Ra.norm(dim=1) > tol * bnorm[active]
        if not keep.all():
            active, P, rz, Ra = active[keep], P[keep], rz[keep], Ra[keep]
        if not active.numel():
            break
        Z = M(Ra)
        rz_new = (Ra * Z).sum(1)
        P = Z.add_(P.mul_((rz_new / rz)[:, None]))
        rz = rz_new
    res = R.norm(dim=1) / bnorm
    return X, SolveInfo("cg", it, res, bool(active.numel() == 0), "")


REFINE_TOL = 1e-10  # a refinement stops early only once (nearly) exact


def refine(op: Operator, B: Tensor, steps: int, approx_inverse: MatMat, name: str, note: str
           ) -> tuple[Tensor, SolveInfo]:
    """`steps` CG steps on op for each row of B (k, p), preconditioned by an approximate inverse of op.

    From x = 0, so step 1 is the approximate answer rescaled; each step costs
    one product with op per right-hand side. The note adds the residuals reached.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise InputError(f"refine needs an integer number of CG steps >= 1, got {steps!r}")
    X, info = cg(op.matmat, B, tol=REFINE_TOL, max_iter=steps, precond=approx_inverse)
    note = (f"{note}; refined by {info.iterations} preconditioned CG steps on {op.name}: relative residual "
            f"median {float(info.residual.median()):.3g}, max {info.max_residual:.3g}")
    return X, SolveInfo(f"{name}+cg", info.iterations, info.residual, info.converged, note)
