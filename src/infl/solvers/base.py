"""What every solver returns beside its answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import InputError, warn
from ..objective import is_integer
from ..operators import Operator


@dataclass(frozen=True)
class SolveInfo:
    """How a solve of A X = B went.

    method: the solver's name; iterations: steps taken (0 for a direct
    solve); residual: ||A x - b|| / ||b|| per right-hand side (k,), None
    where not measured, nan for single rows not measured (refine's closing
    step); converged: every right-hand side met the tolerance;
    note: what the result represents (scale, depth, rank...).
    """

    method: str
    iterations: int
    residual: Tensor | None
    converged: bool
    note: str = ""

    def __repr__(self) -> str:
        return (f"SolveInfo(method={self.method!r}, iterations={self.iterations}, max_residual={self.max_residual:.3g}, "
                f"converged={self.converged}, note={self.note!r})")

    @property
    def max_residual(self) -> float:
        """The worst relative residual among the rows measured, nan when none was."""
        if self.residual is None or self.residual.isnan().all():
            return float("nan")
        return float(self.residual.nan_to_num(nan=-1.0).max())


def check_count(check: object) -> int:
    """The number of right-hand sides a solver verifies per solve, validated (an integer >= 0)."""
    return count(check, "check", "right-hand sides to verify")


def refine_count(refine: object) -> int:
    """The block conjugate-gradient steps that refine an approximate inverse, validated (an integer >= 0)."""
    return count(refine, "refine", "conjugate-gradient steps")


def count(value: object, name: str, meaning: str, low: int = 0) -> int:
    """value as an int if it is an integer >= low (a NumPy one too, not a bool), else an InputError naming `name`
    and what it counts."""
    if not (is_integer(value) and value >= low):
        raise InputError(f"{name} must be an integer >= {low} ({meaning}), got {value!r}")
    return int(value)


APPROXIMATE = 0.01  # a median measured residual above this is worth a warning (0.03 left scores 30% off)


def measured(op: Operator, X: Tensor, B: Tensor, check: int, name: str, fix: str, note: str
             ) -> tuple[Tensor | None, str]:
    """The relative residuals of the first `check` rows of X (k, p) as answers to A x = b (rows of B), nan for
    the other rows ((k,), None when none is measured), and `note` with them appended; one product with op on
    `check` rows.

    Warns, naming `fix`, when the median measured residual exceeds APPROXIMATE: such an answer is an
    approximation whose scores may rank training points unlike the solve's.
    """
    m = min(check, B.shape[0])
    if not m:
        return None, note
    res = relative_residual(op.matmat(X[:m]), B[:m])
    median = float(res.median())
    warn_if_approximate(name, median, f"median over {m} right-hand sides", op.name, fix)
    residual = torch.full((B.shape[0],), float("nan"), dtype=res.dtype, device=res.device)
    residual[:m] = res
    return residual, (f"{note}; relative residual against {op.name} on {m} of {B.shape[0]} right-hand sides: "
                      f"median {median:.3g}, max {float(res.max()):.3g}")


def warn_if_approximate(name: str, median: float, over: str, against: str, fix: str) -> None:
    """Warn, naming `fix`, when a median relative residual (taken `over` some rows, `against` an operator)
    exceeds APPROXIMATE: such an answer's scores may rank training points unlike the solve's."""
    if not median <= APPROXIMATE:
        warn(f"{name}: relative residual {median:.3g} ({over}) against {against}: the answer is an approximation, "
             f"and its scores may rank training points differently from the exact solve's. {fix}")


def unit_rows(B: Tensor) -> tuple[Tensor, Tensor]:
    """B (k, p) with each nonzero row divided by its largest |entry|, and those sizes (k, 1): a solve on unit rows
    cannot underflow (a tiny gradient's p^T A p) or overflow; multiply its answer by the sizes. Not the 2-norm: its
    squares underflow."""
    size = B.abs().amax(dim=1, keepdim=True)
    size = torch.where(size > 0, size, torch.ones_like(size))
    return B / size, size


SOLVED = 1e-8  # relative residual at which an approximate answer counts as the solve's


def solved(residual: Tensor | None, at: float = SOLVED) -> bool:
    """Whether residuals were measured and every measured one is at most `at` (default SOLVED)."""
    return residual is not None and bool(residual.nan_to_num(nan=0.0).max() <= at)


def itemsize(op: Operator) -> int:
    """Bytes per number of the operator's dtype."""
    return torch.finfo(op.dtype).bits // 8


def relative_residual(AX: Tensor, B: Tensor) -> Tensor:
    """||A x - b|| / ||b|| for each row pair of AX and B (k, p) -> (k,); 0 where b = 0 and A x = 0. Taken on rows
    scaled to unit size, so a tiny b (whose squares underflow) gets its true ratio, not 0."""
    unit, size = unit_rows(B)
    return (AX / size - unit).norm(dim=1) / unit.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)
