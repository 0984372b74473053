"""CG: conjugate gradients (infl.solvers.krylov) with a Nystrom or Kronecker-factored preconditioner."""

from __future__ import annotations

from torch import Tensor

from ..errors import InputError, warn
from ..operators import Operator
from .base import SolveInfo, count, itemsize
from .kfac import EKFAC, KFAC
from .krylov import cg
from .nystrom import NystromPreconditioner


class CG:
    """Conjugate gradients with a preconditioner: randomized Nystrom of the given rank, or EK-FAC / K-FAC.

    rank: eigen-directions captured by the Nystrom preconditioner (0 disables
    it); the sketch costs 2 x `rank` operator products once, at fit (one
    subspace iteration sharpens it), in float32 for a float64 operator
    where rank < p and the captured eigenvalues stay above 1e-4 of the
    largest, else redone in float64 (infl.operators.in_float32; applied in
    float64). preconditioner:
    'nystrom', or 'ekfac' / 'kfac' (the Kronecker-factored inverse of infl.EKFAC, fitted once, for
    networks with Linear / Conv2d layers; the answer is still the exact
    solve, the factors only speed it up). Warns, with the residual, when
    max_iter is reached before tol.
    """

    name = "cg"
    PRECONDITIONERS = ("nystrom", "ekfac", "kfac")

    def __init__(self, tol: float = 1e-6, max_iter: int = 1000, rank: int = 200, seed: int = 0,
                 preconditioner: str = "nystrom") -> None:
        max_iter, rank = count(max_iter, "CG max_iter", "iterations", 1), count(rank, "CG rank", "Nystrom rank", 0)
        if not tol > 0:
            raise InputError(f"CG needs tol > 0, got tol={tol}")
        if preconditioner not in self.PRECONDITIONERS:
            raise InputError(f"unknown CG preconditioner {preconditioner!r}; choose one of "
                             f"{', '.join(self.PRECONDITIONERS)}")
        self.tol, self.max_iter, self.rank, self.seed = tol, max_iter, rank, seed
        self.preconditioner = preconditioner

    def footprint(self, op: Operator) -> dict[str, int]:
        """Bytes held, by item: the preconditioner, its sketch while fitting, and CG's vectors per right-hand side."""
        r, s = min(self.rank, op.p), itemsize(op)
        per_rhs = {f"per right-hand side (5 vectors of {op.p})": 5 * op.p * s}
        if self.preconditioner != "nystrom":
            return {**self._kronecker().footprint(op), **per_rhs}
        return {f"Nystrom preconditioner ({r} x {op.p})": r * op.p * s,
                f"its sketch ({r} x {op.p}, x3), during fit": 3 * r * op.p * s, **per_rhs}

    def _kronecker(self) -> EKFAC:
        return (EKFAC if self.preconditioner == "ekfac" else KFAC)(check=0)

    def fit(self, op: Operator) -> CG:
        """Build the preconditioner (Nystrom if rank > 0, or the Kronecker factors)."""
        self.op = op
        if self.preconditioner != "nystrom":
            kron = self._kronecker().fit(op)
            self.precond = kron.inverse
            self.precond_note = f"preconditioner: {kron.name} over {len(kron.factors.layers)} layers"
        elif self.rank:
            self.precond = NystromPreconditioner(op, min(self.rank, op.p), self.seed)
            self.precond_note = f"preconditioner: Nystrom rank {self.precond.rank}"
        else:
            self.precond, self.precond_note = None, "no preconditioner"
        return self

    def solve(self, B: Tensor) -> tuple[Tensor, SolveInfo]:
        """X (k, p) with A x = b for each row of B (k, p)."""
        X, info = cg(self.op.matmat, B, tol=self.tol, max_iter=self.max_iter, precond=self.precond)
        if not info.converged:
            warn(
                f"CG stopped at max_iter={self.max_iter} with relative residual {info.max_residual:.2e} > "
                f"tol={self.tol:.0e}; raise max_iter or the preconditioner rank, or add damping")
        return X, SolveInfo("cg", info.iterations, info.residual, info.converged, self.precond_note)
