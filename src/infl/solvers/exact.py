"""Direct solve: form the curvature once, factor it once (Cholesky), reuse for every right-hand side."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import CurvatureError, InputError, warn
from ..operators import Operator, damping_in, damping_needed
from ..budget import _mb
from .base import SolveInfo, itemsize, relative_residual

CHECK_ROWS = 64  # rows of a quad() batch whose residual is measured (all rows would triple its cost)
CONDITION_STEPS = 20  # power and inverse iterations that estimate the condition number (each O(p^2))
LOST = 1e-2  # condition number x eps above which the answers may be off by more than this (relative): warned


class Exact:
    """Solve A X = B with a Cholesky factor of the dense A (p x p).

    Costs p^2 numbers of memory and O(p^3) to factor; refuses p above
    `max_params` (raise it if the memory is there). Raises CurvatureError,
    with the most negative eigenvalue, when A is not positive definite.
    """

    name = "exact"

    def __init__(self, max_params: int = 20_000) -> None:
        if max_params < 1:
            raise InputError(f"max_params must be >= 1, got {max_params}")
        self.max_params = max_params

    def footprint(self, op: Operator) -> dict[str, int]:
        """Bytes held, by item: the dense curvature while formed and symmetrised (x3), then its Cholesky factor."""
        return {f"dense curvature ({op.p} x {op.p}, x3), during fit": 3 * op.p**2 * itemsize(op),
                f"Cholesky factor ({op.p} x {op.p})": op.p**2 * itemsize(op), **op.dense_footprint()}

    def fit(self, op: Operator) -> Exact:
        """Form and factor A = op.to_dense()."""
        if op.p > self.max_params:
            peak = 3 * op.p**2 * itemsize(op)  # three p x p while it is formed
            size = f"{peak / 2**30:.3g} GiB" if peak >= 2**30 else _mb(peak)
            raise InputError(
                f"the exact solver forms a dense {op.p} x {op.p} curvature (up to {size} while it is formed); p is "
                f"above max_params={self.max_params}. Use solver='cg' (matrix-free), or raise max_params if the "
                "memory is there"
            )
        self.op = op
        H = op.to_dense()
        L, info = torch.linalg.cholesky_ex(H)
        if info.item() != 0:
            raise _indefinite(H, op)
        self.factor = L
        self._check_condition()
        return self

    def _check_condition(self) -> None:
        """Warn where cond(A) x eps > LOST: a residual at rounding then still allows a relative error of that size
        (A's entries carry rounding of their own), which the solves' residual checks cannot see."""
        cond = condition_estimate(self.factor)
        lost = cond * torch.finfo(self.factor.dtype).eps
        if lost > LOST:
            warn(f"exact: the curvature's condition number is about {cond:.2g}, so in "
                 f"{str(self.factor.dtype).removeprefix('torch.')} the answers may be off by up to about {lost:.1g} "
                 f"(relative) although the solves' residuals are small. {_precision_fix(self.factor.dtype)}")

    def solve(self, B: Tensor) -> tuple[Tensor, SolveInfo]:
        """X (k, p) with A x = b for each row b of B (k, p)."""
        L = self.factor
        X = torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, B.T, upper=False), upper=True).T
        res = relative_residual((X @ L) @ L.T, B)  # (L L^T x)^T = x^T L L^T
        return X, SolveInfo(self.name, 0, res, self._accurate(res), f"Cholesky of dense {self.op.name}")

    def quad(self, B: Tensor) -> tuple[Tensor, SolveInfo]:
        """b^T A^-1 b for each row b of B (k, p), as ||L^-1 b||^2: one triangular solve, a sixth of
        solve()'s work (solve + residual). The residual is that of L y = b, on the first CHECK_ROWS rows."""
        Y = torch.linalg.solve_triangular(self.factor, B.T, upper=False)  # (p, k)
        m = min(B.shape[0], CHECK_ROWS)
        res = relative_residual((self.factor @ Y[:, :m]).T, B[:m])
        note = f"Cholesky of dense {self.op.name}; b^T A^-1 b = ||L^-1 b||^2, residual of L y = b on {m} row(s)"
        return Y.square().sum(0), SolveInfo(self.name, 0, res, self._accurate(res), note)

    def _accurate(self, residual: Tensor) -> bool:
        """Whether the residuals are within sqrt(eps) of the dtype; warns with the fix when not (float32 and an
        ill-conditioned curvature leave answers far from the solve)."""
        at = torch.finfo(residual.dtype).eps ** 0.5
        worst = float(residual.max()) if residual.numel() else 0.0
        if worst <= at:
            return True
        warn(f"exact: the Cholesky solve in {str(residual.dtype).removeprefix('torch.')} left a relative residual of "
             f"{worst:.2g} (above {at:.1g}): the curvature is too ill-conditioned for this precision, and the answers "
             f"may be far from the solve. {_precision_fix(residual.dtype)}")
        return False


def condition_estimate(L: Tensor, steps: int = CONDITION_STEPS) -> float:
    """cond(A) = lambda_max / lambda_min of A = L L^T (L lower-triangular, (p, p)), estimated from below: power
    iteration on A and inverse iteration (two triangular solves a step), `steps` each, from a seeded start."""
    start = torch.randn(L.shape[0], 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    top = low = start.to(dtype=L.dtype, device=L.device)
    for _ in range(steps):
        top = L @ (L.mT @ top)
        top = top / top.norm()
        low = torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, low, upper=False), upper=True)
        low = low / low.norm()
    largest = (L.mT @ top).square().sum()  # Rayleigh quotients v^T A v = ||L^T v||^2
    smallest = (L.mT @ low).square().sum()
    return float(largest / smallest)


def _precision_fix(dtype: torch.dtype) -> str:
    """What to do about a Cholesky solve that lost accuracy in `dtype`."""
    if dtype != torch.float64:
        return "Compute in float64 (model.double() and float64 data), or add damping"
    return "Add damping (or a larger l2); with features of very different sizes, standardise them"


def _indefinite(H: Tensor, op: Operator) -> CurvatureError:
    """The error for a dense curvature H (op's, damping included) that Cholesky could not factor: singular (its
    smallest eigenvalue 0 to rounding, e.g. a parameter the loss does not use) or indefinite."""
    eig = torch.linalg.eigvalsh(H)
    low, top = eig[0].item(), eig.abs().max().item()
    if abs(low) <= max(100, op.p) * torch.finfo(H.dtype).eps * top:
        flat = (H.abs().amax(1) <= torch.finfo(H.dtype).eps * top).nonzero().squeeze(1).tolist()
        names = _parameter_names(op, flat)
        return CurvatureError(
            f"the curvature ({op.name}) is singular: its smallest eigenvalue is {low:.3g}, zero to rounding "
            f"(largest {top:.3g}), so some directions have no curvature"
            + (f", among them {len(flat)} entries of {', '.join(names)} with rows of zeros (the loss does not depend "
               "on them here)" if names else "")
            + f". Pass damping={max(2 * damping_needed(op, low), damping_in(op) + 1e-6 * top):.2g} (or a larger l2)"
            + (", or freeze parameters the model does not use (requires_grad=False)" if names else ""))
    need = damping_needed(op, low)
    return CurvatureError(
        f"the curvature ({op.name}) is not positive definite: its smallest eigenvalue is {low:.3g}. "
        f"Influence needs H + damping * I > 0: pass damping > {need:.3g} "
        f"(e.g. damping={max(2 * need, 1e-3):.2g}), or use curvature='gauss-newton'"
    )


def _parameter_names(op: Operator, flat: list[int]) -> list[str]:
    """The names of the model's parameters holding the flat positions `flat` (the first 5, then "and k more"; none
    when op has no objective behind it)."""
    while not hasattr(op, "obj") and hasattr(op, "op"):
        op = op.op
    obj = getattr(op, "obj", None)
    if obj is None or not flat:
        return []
    ends = torch.tensor([s.numel() for s in obj.shapes]).cumsum(0)
    owners = torch.searchsorted(ends, torch.tensor(flat), right=True).unique().tolist()
    return [obj.names[i] for i in owners[:5]] + ([f"and {len(owners) - 5} more"] if len(owners) > 5 else [])
