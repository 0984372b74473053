"""Conjugate gradients on many right-hand sides at once, and a few steps of block conjugate gradients to refine
an approximate inverse."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ..errors import CurvatureError, InputError
from ..inputs import batches
from ..operators import Operator
from .base import SOLVED, SolveInfo, unit_rows, warn_if_approximate

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
    unit, size = unit_rows(B)
    X, info = _cg(matmat, unit, tol, max_iter, precond or (lambda R: R))
    return X.mul_(size), info


def _cg(matmat: MatMat, B: Tensor, tol: float, max_iter: int, M: MatMat) -> tuple[Tensor, SolveInfo]:
    """cg() on rows of unit size (or zero)."""
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


REFINE_BLOCK = 128  # right-hand sides sharing one block Krylov space


MIXED_SHARE = 0.01  # float32's error may reach this fraction of a row's residual, else op solves the group


def refine(op: Operator, B: Tensor, steps: int, approx_inverse: MatMat, name: str, note: str,
           low: Operator | None = None) -> tuple[Tensor, SolveInfo]:
    """`steps` steps of preconditioned block conjugate gradients on op for the rows of B (k, p).

    The right-hand sides, in groups of up to REFINE_BLOCK, share one Krylov
    space: span{M B, M A M B, ...} with M the approximate inverse, one block
    per step; each row's block CG answer is the A-norm-best point of the whole
    space (a Galerkin solve), so it is never worse than that row's own CG
    after the same steps. Each step costs one product with op per right-hand
    side; the basis and its products are held, 2 x steps x group x p numbers.
    Then a closing step (`_closing_step`, per group) moves the rows not yet
    solved along their preconditioned residuals, for one more preconditioner
    application and a product on CLOSING_PROBES rows of the group only. A
    group's answers depend on its own rows only. The note adds the residuals
    reached.

    low: op's float32 form, where the caller knows op's eigenvalues stand clear
    of float32 rounding (operators.resolved_in_float32): the steps then take
    its (cheaper) products, and op checks the answers on CLOSING_PROBES rows
    per group (`_float32_enough`); a group whose residuals float32's rounding
    reaches (answers more accurate than the float32 products can tell) is
    solved again with op.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise InputError(f"refine needs an integer number of CG steps >= 1, got {steps!r}")
    if not B.shape[0]:
        return B.clone(), SolveInfo(f"{name}+cg", 0, B.new_empty(0), True, note)
    unit, size = unit_rows(B)  # a tiny right-hand side's norms would underflow
    low = None if low is op else low
    X, info = _refine(op, unit, steps, approx_inverse, name, note, low)
    return X.mul_(size), info


def _refine(op: Operator, B: Tensor, steps: int, approx_inverse: MatMat, name: str, note: str,
            low: Operator | None) -> tuple[Tensor, SolveInfo]:
    """refine() on rows of unit size (or zero): block CG, then the closing step, per group of REFINE_BLOCK rows
    (so a group's answer does not depend on the rows solved with it in other groups)."""
    X, res, taken = torch.empty_like(B), B.new_empty(B.shape[0]), 0
    bnorm = B.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)
    after, alphas, probed, refused, redone, groups = [], [], [], False, [], 0
    for rows in batches(B.shape[0], REFINE_BLOCK):
        Xb, Rb, used, why = _group_galerkin(op, B[rows], steps, approx_inverse, low)
        redone, groups = redone + [why] * (why is not None), groups + 1
        taken = max(taken, used)
        rb = Rb.norm(dim=1) / bnorm[rows]
        after.append(rb)
        movable = (rb > SOLVED) & (used == steps)  # a space that stopped growing holds the exact answers
        if movable.any():
            Xb, rb, alpha = _closing_step(op, approx_inverse, Xb, Rb, rb, bnorm[rows], movable)
            refused |= alpha is None
            if alpha is not None:
                alphas.append(alpha)
                probed.append(rb[~rb.isnan() & movable])
        X[rows], res[rows] = Xb, rb
    after = torch.cat(after)
    mixed = "" if low is None else (
        " (float32 products, the answers checked in float64" + (
            f"; {'the' if len(redone) == groups else f'{len(redone)} of {groups}'} group{'s' if groups > 1 else ''}"
            f" of right-hand sides solved again in float64, as {' or '.join(sorted(set(redone)))})"
            if redone else ")"))
    note = (f"{note}; refined by {taken} preconditioned block CG steps on {op.name}{mixed}: relative residual "
            f"median {float(after.median()):.3g}, max {float(after.max()):.3g}")
    if refused:
        note += "; no closing step (the preconditioned residuals met non-positive curvature)"
    if alphas:
        seen = torch.cat(probed)
        length = f"{alphas[0]:.3g}" if len(alphas) == 1 else f"{min(alphas):.3g} to {max(alphas):.3g}"
        note += (f"; closing step{'s' if len(alphas) > 1 else ''} of length {length} along the preconditioned "
                 f"residuals: relative residual on the {seen.numel()} measured median {float(seen.median()):.3g}, "
                 f"max {float(seen.max()):.3g}")
    warn_if_approximate(name, float(res.nanmedian()), "median", f"{op.name} after {taken} preconditioned block CG "
                        "steps", f"Raise refine (e.g. refine={2 * steps}), or use solver='cg'")
    return X, SolveInfo(f"{name}+cg", taken, res, bool(res.max() <= SOLVED), note)


CLOSING_PROBES = 8  # rows whose product measures the closing step's length


def _closing_step(op: Operator, M: MatMat, X: Tensor, R: Tensor, res: Tensor, bnorm: Tensor, movable: Tensor
                  ) -> tuple[Tensor, Tensor, float | None]:
    """X + alpha M R on the `movable` rows (bool, (k,)) for residuals R (k, p), their relative norms res (k,)
    and b's norms bnorm (k,); the relative residuals known afterwards (the other rows' as they were, the
    probed rows' new ones, nan for the moved rows not measured) and alpha.

    Along d = M r, the A-norm error of a row is least at alpha_i = r.d / d.A d (> 0 for A and M positive
    definite). alpha is their median over CLOSING_PROBES rows spread evenly over the movable ones, capped at
    1.9 x their smallest so that every probed row's error falls; rows share alpha because one preconditioner
    scales them alike. A row far from all the probed ones (its alpha_i < alpha / 2) would lose accuracy, and
    its residual is not measured: the price of a product on the probed rows only (a block CG step needs it on
    all). Costs one application of M to the movable rows. X and the residuals are returned unchanged, with
    alpha None, when an alpha_i is not a positive number (M or A not positive definite there).
    """
    rows = torch.nonzero(movable).squeeze(1)
    at = spread(rows.numel(), CLOSING_PROBES).to(rows.device)
    probed = rows[at]
    D = M(R[rows])
    AD = op.matmat(D[at])
    each = (R[probed] * D[at]).sum(1) / (D[at] * AD).sum(1)
    if not (torch.isfinite(each).all() and (each > 0).all()):
        return X, res, None
    alpha = float(torch.minimum(each.median(), 1.9 * each.min()))
    known = res.clone()
    known[rows] = float("nan")
    known[probed] = (R[probed] - alpha * AD).norm(dim=1) / bnorm[probed]
    return X.index_add_(0, rows, D, alpha=alpha), known, alpha


def _block_galerkin(op: Operator, B: Tensor, steps: int, M: MatMat, low: Operator | None = None
                    ) -> tuple[Tensor, Tensor, int]:
    """X (k, p) minimising each row's error in the A-norm over the block Krylov space of M A from M B
    (`steps` blocks); its residuals B - A X (k, p) and the blocks used (fewer once the space stops growing).

    The basis V (orthonormal rows) and AV fill preallocated buffers; T = V A V^T grows by its new column
    block each step, so nothing is recomputed. With `low` (op's float32 form) the products are low's, and so
    are AV and the residuals; everything else is as without it (in float32, the basis would lose the
    directions below float32's rounding that tell nearly equal right-hand sides apart).
    """
    k, p = B.shape
    cap = min(steps * k, p)  # the basis never exceeds p rows
    product = op.matmat if low is None else (lambda Q: low.matmat(Q.to(low.dtype)).to(Q.dtype))
    V, AV = B.new_empty(cap, p), B.new_empty(cap, p)
    T = B.new_zeros(cap, cap)
    m, used, W = 0, 0, M(B)
    for step in range(steps):
        Q = _new_directions(W, V[:m])
        if Q is None or m == cap:  # the space is invariant (or all of R^p): the answer in it is exact
            break
        Q = Q[:cap - m]
        q = Q.shape[0]
        V[m:m + q] = Q
        AV[m:m + q] = product(Q)
        C = V[:m + q] @ AV[m:m + q].T  # (m + q, q): the new column block of T
        T[:m + q, m:m + q], T[m:m + q, :m] = C, C[:m].T
        T[m:m + q, m:m + q] = (C[m:] + C[m:].T) / 2
        m, used = m + q, used + 1
        if step + 1 < steps:
            W = M(AV[m - q:m])
    L, info = torch.linalg.cholesky_ex(T[:m, :m])
    if info.item():
        raise CurvatureError("block conjugate gradients met negative curvature: the operator is not positive "
                             "definite on the Krylov space. Add damping, or use curvature='gauss-newton'")
    Y = torch.cholesky_solve(V[:m] @ B.T, L)  # (m, k) coordinates in the basis
    return Y.T @ V[:m], B - Y.T @ AV[:m], used


def _group_galerkin(op: Operator, B: Tensor, steps: int, M: MatMat, low: Operator | None
                    ) -> tuple[Tensor, Tensor, int, str | None]:
    """_block_galerkin with low's products where op's check passes (`_float32_enough`), else with op's; and why
    it was solved again with op's (None where it was not)."""
    if low is None:
        return (*_block_galerkin(op, B, steps, M), None)
    try:
        X, R, used = _block_galerkin(op, B, steps, M, low)
    except CurvatureError:  # op itself decides
        return (*_block_galerkin(op, B, steps, M), "float32 met non-positive curvature")
    if _float32_enough(op, B, X, R):
        return X, R, used, None
    return (*_block_galerkin(op, B, steps, M), "float32's rounding reached their residuals")


def _float32_enough(op: Operator, B: Tensor, X: Tensor, R: Tensor) -> bool:
    """Whether answers X (k, p) to B (k, p), found with float32 products that put their residuals at R (k, p),
    stand. R's rows are replaced by the true ones (op's) on CLOSING_PROBES rows spread over those unsolved
    (the closing step's; one product), whose differences give float32's error per unit of answer,
    ||R_true - R|| / ||X|| (the largest seen). False where that error, for any row's answer, exceeds MIXED_SHARE
    of its residual (the answers reach float32's rounding), where it is not a finite number, or where no row is
    left to measure it on while some row is nonzero."""
    live = torch.nonzero(R.norm(dim=1) > SOLVED * B.norm(dim=1)).squeeze(1)
    if not live.numel():
        return not bool((B != 0).any())
    at = live[spread(live.numel(), CLOSING_PROBES).to(live.device)]
    true = B[at] - op.matmat(X[at])
    size = X.norm(dim=1)
    rate = float(((true - R[at]).norm(dim=1) / size[at].clamp_min(torch.finfo(X.dtype).tiny)).max())
    R[at] = true
    return math.isfinite(rate) and not bool((MIXED_SHARE * R.norm(dim=1) < rate * size).any())


def spread(n: int, count: int) -> Tensor:
    """min(count, n) indices spread evenly over range(n), the first and last included."""
    return torch.linspace(0, n - 1, min(count, n)).round().long()


def _new_directions(W: Tensor, V: Tensor) -> Tensor | None:
    """Orthonormal rows spanning the part of W's rows (k, p) outside the orthonormal rows V (m, p), without
    directions at rounding level (None if nothing is left). Each row is judged against its own size (a
    small right-hand side keeps its directions): projection, rows whose remainder is rounding dropped, the
    rest scaled to unit norm, orthonormalised through the k x k Gram matrix (its eigenvectors; far cheaper
    than an SVD or QR of the wide W), then projection and Cholesky orthonormalisation once more."""
    eps = torch.finfo(W.dtype).eps
    before = W.norm(dim=1)
    if V.shape[0]:
        W = W - (W @ V.T) @ V
    after = W.norm(dim=1)
    real = after > 1e3 * eps * before
    if not real.any():
        return None
    W = W[real] / after[real, None]
    lam, U = torch.linalg.eigh(W @ W.T)
    keep = lam > 100 * eps * float(lam[-1])  # resolved by the Gram matrix
    W = (U[:, keep] / lam[keep].sqrt()).T @ W
    if V.shape[0]:
        W = W - (W @ V.T) @ V
    L, info = torch.linalg.cholesky_ex(W @ W.T)
    if info.item():  # lost a direction to the projection: fall back to Householder
        return torch.linalg.qr(W.T).Q.T.contiguous()
    return torch.linalg.solve_triangular(L, W, upper=False)
