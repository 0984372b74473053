"""Low-rank inverse from the top eigenpairs (Arnoldi / Lanczos; Schioppa et al. 2022),
with the dropped part of the spectrum kept instead of thrown away.

A ~= U^T diag(lam) U + lam_rest (I - U^T U), so
A^{-1} b ~= U^T diag(1/lam) U b + (b - U^T U b) / lam_rest,

lam (r,) the top eigenvalues (block Lanczos with thick restarts,
infl.solvers.lanczos: products with blocks of vectors, one batched pass over
the data each) and lam_rest the mean eigenvalue of the
dropped subspace, trace(P A P) / (p - r) with P = I - U^T U, estimated by
random probes projected off the kept eigenvectors (exact when the rest is flat). Peers drop that subspace (1/lam_rest = 0), although the
small eigenvalues are exactly where the inverse is large.

refine=k > 0 then takes k steps of block conjugate gradients on the true
operator, preconditioned by that approximate inverse (infl.solvers.krylov.refine):
k more products per right-hand side, and the residual falls with k towards the
exact solve. The eigenpairs then only shape the preconditioner, so where a
positive lower bound on the eigenvalues is known (l2 + damping on a positive
semi-definite curvature) and no tol below 1e-3 is asked, a float64 operator's
are found with its float32 form (infl.operators.in_float32), and again in
float64 where the spectrum reaches below what float32 resolves; where the
float32 form is kept, the steps take their products with it too, checked in
float64 (infl.solvers.krylov.refine).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import CurvatureError, InputError, warn
from ..operators import Operator, built_in_float32, damping_needed
from .base import SolveInfo, check_count, count, refine_count, itemsize, measured, solved
from .krylov import refine
from .lanczos import basis_size, default_block, top_eigenpairs
from .spectrum import bottom_footprint, smallest_eigenvalue

BOTTOM_RATIO = 10  # a smallest eigenvalue this far below the dropped directions' mean warns


PRECONDITIONER_TOL = 0.1  # eigenpairs that only shape refine's preconditioner need no more
FLOAT32_TOL = 1e-3  # with refine and a tol at least this, the pairs are found with float32 products


class Arnoldi:
    """Top-`rank` eigen-approximation of A, fitted once, applied to every right-hand side.

    rank: eigenpairs kept (must be < p); probes: Hutchinson vectors for the
    trace of the remainder; tol: relative residual ||A u - lam u|| / lam each
    kept eigenpair must reach (default 1e-6; 0.1 with refine > 0, where the
    pairs only shape the preconditioner and the block CG steps do the solving:
    far fewer Lanczos products for the same refined answer; see docs/benchmarks.md,
    the deep-network benchmark); block: vectors per product in the Lanczos
    iteration (default min(rank, 16));
    refine: steps of block CG on the operator preconditioned by the low-rank inverse
    (0, the default: none), then a closing step (infl.solvers.krylov.refine); the
    note gives every right-hand side's residual after the block steps, and
    SolveInfo.residual those measured after the closing step (nan elsewhere).
    check: without refine, right-hand sides per solve whose residual against the
    operator is measured (one product each; 0 skips); a median above 0.1 warns.
    """

    name = "arnoldi"

    def __init__(self, rank: int = 100, probes: int = 32, tol: float | None = None, seed: int = 0, refine: int = 0,
                 block: int | None = None, check: int = 8) -> None:
        rank, probes = count(rank, "Arnoldi rank", "eigenpairs kept", 1), count(probes, "probes", "trace probes", 1)
        if block is not None:
            block = count(block, "block", "vectors per product", 1)
        if tol is not None and not 0 < tol < 1:
            raise InputError(f"Arnoldi tol must lie in (0, 1) or be None (automatic), got {tol!r}")
        self.rank, self.probes, self.seed, self.refine = rank, probes, seed, refine_count(refine)
        self.tol = tol if tol is not None else (PRECONDITIONER_TOL if refine else 1e-6)
        self.block = block or default_block(rank)
        self.check = check_count(check)

    def footprint(self, op: Operator) -> dict[str, int]:
        """Bytes held, by item: the kept eigenvectors, and the Lanczos basis and one block's product while fitting."""
        r, s = min(self.rank, op.p), itemsize(op)
        basis = min(basis_size(r, self.block), op.p)
        return {f"eigenvectors ({r} x {op.p})": r * op.p * s,
                f"Lanczos basis ({basis} x {op.p}) and a block product ({self.block} x {op.p}), during fit":
                    (basis + self.block) * op.p * s,
                f"probes ({self.probes} x {op.p}), during fit": self.probes * op.p * itemsize(op),
                **({} if self.refine else bottom_footprint(op))}

    def fit(self, op: Operator, floor: float | None = None) -> Arnoldi:
        """Find the top eigenpairs of op and the mean eigenvalue of the rest.

        floor: a known lower bound on op's eigenvalues (l2 + damping for a positive semi-definite data part).
        Unknown (None) and without refine, op's smallest eigenvalue is estimated (Lanczos, at most 200
        products): the dropped directions all get their mean, and one far below it is inverted far too weakly,
        by an error the measured residual understates; that warns, and a non-positive one is refused."""
        if self.rank >= op.p:
            raise InputError(f"Arnoldi rank {self.rank} must be below the number of parameters p = {op.p}; "
                             f"use rank <= {op.p - 1}, or solver='exact' for "
                             "the whole spectrum, which is cheap at this size")
        self.op = op
        # float32 only with a known floor: small eigenvalues hidden among the dropped ones would go unseen
        self.low_ = None  # op's float32 form for refine's products, where the float32 fit was kept
        if self.refine and self.tol >= FLOAT32_TOL and floor:
            (lam, U, rest), self.low_ = built_in_float32(
                op, self._spectrum, lambda fit: (min(float(fit[0][-1]), fit[2], floor), float(fit[0][0])))
        else:
            lam, U, rest = self._spectrum(op)
        if rest < -torch.finfo(lam.dtype).eps ** 0.5 * float(lam[0]):  # z^T A z >= 0 for PSD A, up to rounding
            raise CurvatureError(f"the curvature is not positive definite: the mean eigenvalue of the {op.p - self.rank} "
                                 f"directions outside the top {self.rank} is {rest:.3g} < 0, so some are negative; "
                                 "add damping or use curvature='gauss-newton'")
        rest_trace = rest * (op.p - self.rank)
        # Above lam[-1] only by as much as the eigenpairs' own accuracy (tol, relative) is no news: clamp silently.
        known = float(lam[-1]) * (1 + self.tol + torch.finfo(lam.dtype).eps ** 0.5)
        noise = 100 * torch.finfo(lam.dtype).eps * float(lam[0])  # products cannot resolve a smaller mean
        if not noise < rest <= known:
            warn(f"Arnoldi's estimate {rest:.3g} of the mean dropped eigenvalue lies outside ({noise:.3g}, "
                 f"{float(lam[-1]):.3g}]: at or below the lower end the dropped directions are singular to this "
                 "precision; clamped to a thousandth of the smallest kept eigenvalue. Add damping, raise probes, or "
                 "use solver='cg'")
            rest = min(max(rest, 1e-3 * float(lam[-1])), float(lam[-1]))
        rest = min(rest, float(lam[-1]))  # within the eigenpairs' tolerance above it: the smallest kept one
        self.lam_rest = rest
        self.captured_ = float(lam.sum()) / (float(lam.sum()) + max(rest_trace, 0.0))
        self.floor_ = floor
        self.bottom_ = self._check_bottom(op) if self._estimated() else floor
        return self

    def _spectrum(self, op: Operator) -> tuple[Tensor, Tensor, float]:
        """The top eigenpairs of op (lam (rank,), U (rank, p)), kept in self, and the dropped directions' mean
        eigenvalue; CurvatureError for a non-positive top one."""
        lam, U = self._top_eigenpairs(op)
        if lam[-1] <= 0:
            raise CurvatureError(f"the curvature has a non-positive eigenvalue {float(lam[-1]):.3g} among its top "
                                 f"{self.rank}; add damping or use curvature='gauss-newton'")
        self.lam, self.U = lam, U
        return lam, U, self._mean_dropped_eigenvalue(op)

    def _estimated(self) -> bool:
        """Whether fit estimated the smallest eigenvalue (no floor given, no refine)."""
        return self.floor_ is None and not self.refine

    def _check_bottom(self, op: Operator) -> float:
        """op's smallest eigenvalue (estimated from above); CurvatureError if <= 0, a warning if far below the
        dropped directions' mean, the eigenvalue the low-rank inverse gives them all."""
        low, _ = smallest_eigenvalue(op, 1.01 * float(self.lam[0]), seed=self.seed)
        noise = 100 * torch.finfo(self.lam.dtype).eps * float(self.lam[0])  # 0 to this precision (singular)
        if low < -noise:
            raise CurvatureError(f"the curvature has an eigenvalue of about {low:.3g} <= 0 (Lanczos estimate): it is "
                                 f"not positive definite. Add damping > {damping_needed(op, low):.3g}, or use "
                                 "curvature='gauss-newton'")
        if low < self.lam_rest / BOTTOM_RATIO:
            found = (f"an eigenvalue of about {low:.3g}, {self.lam_rest / low:.3g}x" if low > noise else
                     f"an eigenvalue of 0 to this precision (estimate {low:.2g}), far")
            warn(f"Arnoldi: the curvature has {found} below the {self.lam_rest:.3g} its dropped directions are all "
                 "given: along such directions the answers are that much too small, and the measured residual "
                 "understates the error. Pass refine=5 (block CG steps on the true curvature), or use solver='cg'")
        return low

    def _top_eigenpairs(self, op: Operator) -> tuple[Tensor, Tensor]:
        lam, U, converged = top_eigenpairs(op, self.rank, tol=self.tol, block=self.block, seed=self.seed)
        if not converged:
            warn(f"Arnoldi: block Lanczos stopped before its top {self.rank} eigenpairs reached relative "
                 f"residual tol={self.tol:g}; the low-rank part is approximate. Raise tol, lower rank, or "
                 "pass refine > 0 (CG steps correct it)")
        return lam, U

    def _mean_dropped_eigenvalue(self, op: Operator) -> float:
        """trace(P A P) / (p - r), P = I - U^T U, as sum z^T A z / sum z^T z over random probes z = P w."""
        gen = torch.Generator().manual_seed(self.seed + 1)
        Z = (torch.randint(0, 2, (self.probes, op.p), generator=gen) * 2 - 1).to(op.dtype).to(op.device)
        Z = Z - (Z @ self.U.T) @ self.U
        return float((Z * op.matmat(Z)).sum() / Z.square().sum())

    def inverse(self, B: Tensor) -> Tensor:
        """The low-rank inverse applied to each row b of B (k, p), in the eigenpairs' precision (float32 when
        they only shape refine's preconditioner), returned in B's."""
        low = B.to(self.U.dtype)
        C = low @ self.U.T
        return ((C / self.lam) @ self.U + (low - C @ self.U) / self.lam_rest).to(B.dtype)

    def solve(self, B: Tensor) -> tuple[Tensor, SolveInfo]:
        """X (k, p) ~= A^{-1} b for each row b of B (k, p)."""
        note = (f"rank {self.rank}: top eigenvalues {float(self.lam[0]):.3g}..{float(self.lam[-1]):.3g} carry "
                f"{100 * self.captured_:.1f}% of the trace; the other {self.op.p - self.rank} directions are "
                f"treated as one eigenvalue {self.lam_rest:.3g}"
                + (f"; smallest eigenvalue about {self.bottom_:.3g} (Lanczos)" if self._estimated() else ""))
        if self.refine:
            return refine(self.op, B, self.refine, self.inverse, self.name, note, self.low_)
        X = self.inverse(B)
        residual, note = measured(self.op, X, B, self.check, self.name,
                                  "Arnoldi(refine=5) (block CG steps on the true curvature; more where it still warns) or "
                                  "solver='cg' solves it",
                                  note)
        return X, SolveInfo(self.name, 0, residual, solved(residual), note)
