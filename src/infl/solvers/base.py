"""What every solver returns beside its answer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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


def itemsize(op: Operator) -> int:
    """Bytes per number of the operator's dtype."""
    return torch.finfo(op.dtype).bits // 8


def relative_residual(AX: Tensor, B: Tensor) -> Tensor:
    """||A x - b|| / ||b|| for each row pair of AX and B (k, p) -> (k,); 0 where b = 0."""
    return (AX - B).norm(dim=1) / B.norm(dim=1).clamp_min(torch.finfo(B.dtype).tiny)
