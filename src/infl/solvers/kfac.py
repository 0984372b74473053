"""K-FAC and EK-FAC: a Kronecker-factored Gauss-Newton matrix, inverted layer by layer in its eigenbasis.

(G_layer + lambda I)^{-1} v = (Q_S (x) Q_A) diag(1 / (lam + lambda)) (Q_S (x) Q_A)^T v,

lambda = l2 + damping, lam the Kronecker eigenvalues (K-FAC) or the refitted
ones (EK-FAC); statistics and conventions in `infl.kronecker`. Parameters
outside nn.Linear / nn.Conv2d layers get the exact Gauss-Newton diagonal.
An approximation of the Gauss-Newton matrix whichever curvature the
operator holds; each solve measures its residual against that operator on a
few right-hand sides and reports it in the note.

refine=k > 0 takes k steps of block conjugate gradients on the true
curvature, preconditioned by the factored inverse with its damping raised
(refine_damping), then a closing step (infl.solvers.krylov.refine; step 1
already improves on the factored answer): k more curvature products per
right-hand side, and the residual falls with k towards the exact solve. Where
the curvature is known to be positive definite with eigenvalues clear of
float32 rounding, the steps take their products in float32, checked in
float64 (infl.solvers.krylov.refine).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dist import AllReduced, all_sum, world
from ..errors import CurvatureError, InputError, warn
from ..kronecker import find_layers, fit_factors
from ..objective import nonnegative_number
from ..operators import Operator, Shifted, check_tensor_outputs, damping_needed, in_float32, resolved_in_float32
from .base import SolveInfo, check_count, refine_count, itemsize, measured, solved
from .krylov import refine
from .spectrum import bottom_footprint, smallest_eigenvalue, top_eigenvalue


def _data_backed(op: Operator) -> tuple[Operator, float, int | None]:
    """The operator holding (obj, X, y) under any damping shifts, the total shift, and the global n when the
    data are sharded over processes (None in one process)."""
    shift, n_total = 0.0, None
    while isinstance(op, Shifted):
        shift, op = shift + op.shift, op.op
    if isinstance(op, AllReduced):
        n_total, op = op.n_total, op.op
    if getattr(op, "X", None) is None or not hasattr(op, "obj"):
        raise InputError("K-FAC / EK-FAC need the model and data behind the curvature: pass an operator built from "
                         "an objective and data (infl.operators.Hessian / GaussNewton), or use them through "
                         "infl.Influence(..., solver='ekfac')")
    return op, shift, n_total


def _check_definite(op: Operator, who: str) -> None:
    """CurvatureError, with the damping that fixes it, when op's smallest eigenvalue (a Lanczos estimate, from
    above) is not positive beyond rounding: negative, or 0 to this precision (singular)."""
    top = top_eigenvalue(op)
    low, _ = smallest_eigenvalue(op, 1.01 * top)
    noise = 100 * torch.finfo(op.dtype).eps * top
    if low <= noise:
        size = "<= 0" if low <= 0 else "(0 to this precision)"
        raise CurvatureError(f"{who}: the curvature has an eigenvalue of about {low:.3g} {size} (Lanczos estimate): it "
                             "is not positive definite, and block CG steps on it do not solve for influence. Add "
                             f"damping > {max(damping_needed(op, low), noise):.3g}, or use curvature='gauss-newton'")


def _l2_on(l2: float | Tensor, index: slice | Tensor) -> tuple[float, bool]:
    """The weight decay on a group of flat positions (mean if it varies) and whether it is uniform."""
    if not isinstance(l2, Tensor) or l2.ndim == 0:
        return float(l2), True
    part = l2[index]
    return float(part.mean()), bool((part == part[0]).all()) if part.numel() else True


class EKFAC:
    """Kronecker-factored inverse of the Gauss-Newton matrix, fitted once (two passes over the data).

    others: what to do with trained parameters outside nn.Linear / nn.Conv2d
    layers (or layers called more than once per forward): 'diagonal' uses
    the exact Gauss-Newton diagonal for them and warns, naming them;
    'error' refuses. check: right-hand sides per solve whose residual
    against the true curvature is measured (one curvature product; 0 skips).
    refine: steps of EK-FAC-preconditioned block conjugate gradients on the true
    curvature after the factored solve (0, the default: none), then a closing
    step (infl.solvers.krylov.refine); the note gives every right-hand side's
    residual after the block steps, and SolveInfo.residual those measured
    after the closing step (nan elsewhere).
    refine_damping: the refinement's preconditioner is the factored inverse
    with its damping (l2 + damping) raised (1 + refine_damping)-fold. The
    factors miss curvature (between layers, and off the eigenbasis' diagonal)
    in directions they take for nearly flat, where the plain inverse then
    overshoots. On the four models of `benchmarks/refine_damping.py` the
    default 2.0 (3x) beat 0 from 4 steps on in all, from 3 in three; larger
    values do better from 4 steps, smaller at 2. It changes the path, not the
    system solved.
    """

    name = "ekfac"
    eigen = True

    def __init__(self, others: str = "diagonal", check: int = 8, refine: int = 0, refine_damping: float = 2.0
                 ) -> None:
        if others not in ("diagonal", "error"):
            raise InputError(f"others must be 'diagonal' or 'error', got {others!r}")
        check = check_count(check)
        self.refine_damping = nonnegative_number(refine_damping)
        if self.refine_damping is None:
            raise InputError(f"refine_damping must be a finite number >= 0 (a multiple of l2 + damping), "
                             f"got {refine_damping!r}")
        self.others, self.check, self.refine = others, check, refine_count(refine)

    def footprint(self, op: Operator) -> dict[str, int]:
        """Bytes held, by item: per layer the two factors, their eigenvectors and the eigenvalues; the diagonal."""
        base = _data_backed(op)[0]
        layers, others = find_layers(base.obj, base.X[:2])
        s = itemsize(op)
        out = {f"{layer.name or 'model'}: factors and eigenvectors ({layer.out}^2, {layer.width}^2, x2) and "
               f"eigenvalues ({layer.out} x {layer.width})": s * (2 * layer.out**2 + 2 * layer.width**2
                                                                  + layer.out * layer.width) for layer in layers}
        if others:
            out[f"diagonal of {len(others)} other parameter tensors"] = s * (op.p - sum(
                layer.out * layer.width for layer in layers))
        return {**out, **(bottom_footprint(op) if self.refine else {})}

    def fit(self, op: Operator, floor: float | None = None) -> EKFAC:
        """Collect the Kronecker statistics of the data behind op. With refine, and `floor` None (op not known to
        be positive semi-definite; any number says it is), op's smallest eigenvalue is estimated (Lanczos, at most
        200 products) and a non-positive one refused: block CG on an indefinite operator does not solve for
        influence, yet need not meet the negative curvature within a few steps."""
        base, shift, n_total = _data_backed(op)
        obj = base.obj
        size = world()[1]
        if n_total is not None and n_total < size:  # every process finds the layers on its own rows
            raise InputError(f"{self.name} over {size} processes needs a training point per process, but there are "
                             f"{n_total}; use fewer processes, or solver='cg' with its default (Nystrom) "
                             "preconditioner")
        check_tensor_outputs(obj, base.X, self.name)
        if self.refine and floor is None:  # after the cheap checks: it costs up to 230 products
            _check_definite(op, f"{type(self).__name__}(refine={self.refine})")
        factors = fit_factors(obj, base.X, base.y, getattr(base, "batch_size", 512), self.eigen,
                              n_total=n_total, reduce=all_sum)
        if factors.diag_names:
            what = ", ".join(factors.diag_names[:8]) + (" ..." if len(factors.diag_names) > 8 else "")
            if self.others == "error":
                raise InputError(f"{self.name} factors only nn.Linear and nn.Conv2d layers (groups=1, numeric "
                                 f"padding, one call per forward); these trained parameters are elsewhere: {what}. "
                                 "Freeze them (requires_grad=False), pass others='diagonal', or use solver='cg'")
            warn(f"{self.name}: {len(factors.diag_names)} trained parameter tensors are not in a factorable "
                 "layer (nn.Linear, or nn.Conv2d with groups=1 and zero padding given as numbers or 'valid'; called "
                 "once per forward, its input batch-first, its weight used by it alone) and get the exact "
                 f"Gauss-Newton diagonal instead: {what}")
        self.op, self.factors = op, factors
        self.shifts, uniform = [], True
        for layer in factors.layers:
            l2, same = _l2_on(obj.l2, layer.weight if layer.bias is None else
                              torch.cat([torch.arange(obj.p)[layer.weight], torch.arange(obj.p)[layer.bias]]))
            self.shifts.append(l2 + shift)
            uniform &= same
        self.diag_shift = shift + (obj.l2[factors.diag_index] if isinstance(obj.l2, Tensor) and obj.l2.ndim
                                   else float(obj.l2))
        self.uniform_l2 = uniform
        eig = self._eigenvalues(1.0)
        pre = self._eigenvalues(1.0 + self.refine_damping)  # refine's preconditioner's
        self.float32_ = resolved_in_float32(float(pre.min()), float(pre.max()))
        self.low_ = self._steps_form(op, floor, obj.l2_min + shift) if self.refine else None
        # inverted one by one, the eigenvalues need only stand above rounding (a bound of eps * p * max refused
        # float32 models at l2 = 1e-4)
        if float(eig.min()) <= 100 * torch.finfo(eig.dtype).eps * float(eig.max()):
            raise CurvatureError(f"{self.name}: the factored curvature is singular (smallest eigenvalue "
                                 f"{float(eig.min()):.3g}, largest {float(eig.max()):.3g}) and l2 + damping adds "
                                 "too little; pass damping > 0 (e.g. 1e-3 x the largest eigenvalue)")
        return self

    def _steps_form(self, op: Operator, floor: float | None, bound: float) -> Operator | None:
        """op's float32 form for refine's products (krylov.refine), where op's eigenvalues should stand clear of
        float32 rounding: op positive semi-definite in its data part (`floor` given) so l2 + damping, `bound`, is
        a lower bound, resolved_in_float32 next to an estimate of the largest, the factored blocks' largest
        summed (the largest of a PSD matrix is at most its diagonal blocks' summed, but a factored block's can
        fall short of the true block's: the check after the steps measures what float32 costs); None elsewhere."""
        if floor is None or not bound > 0:
            return None
        top = sum(float(block.max()) for block in self._blocks(1.0))
        return in_float32(op) if resolved_in_float32(bound, top) else None

    def _blocks(self, scale: float) -> list[Tensor]:
        """The factored curvature's eigenvalues, each layer's and the diagonal's, with the damping (l2 + damping)
        multiplied by scale."""
        f = self.factors
        return ([layer.lam + scale * s for layer, s in zip(f.layers, self.shifts)]
                + ([f.diag + scale * self.diag_shift] if f.diag.numel() else []))

    def _eigenvalues(self, scale: float) -> Tensor:
        """_blocks(scale), flat."""
        return torch.cat([block.reshape(-1) for block in self._blocks(scale)])

    def power(self, B: Tensor, exponent: float = -1.0, scale: float = 1.0) -> Tensor:
        """(G_kron + scale lambda I)^exponent b for each row b of B (k, p): -1 solves, +1 multiplies; computed in
        B's dtype."""
        X = torch.empty_like(B)
        for layer, shift in zip(self.factors.layers, self.shifts):
            QS, QA = layer.QS.to(B.dtype), layer.QA.to(B.dtype)
            M = QS.T @ layer.gather(B) @ QA  # (k, out, in') in the eigenbasis
            layer.scatter(QS @ (M * ((layer.lam + scale * shift) ** exponent).to(B.dtype)) @ QA.T, X)
        f = self.factors
        if f.diag_index.numel():
            X[:, f.diag_index] = B[:, f.diag_index] * ((f.diag + scale * self.diag_shift) ** exponent).to(B.dtype)
        return X

    def _preconditioner(self, R: Tensor) -> Tensor:
        """refine's preconditioner: the factored inverse with its damping raised, in float32 for a float64 R
        (float32 products are cheaper; block CG picks the curvature-norm-best answer in the space its directions
        span, so their rounding moves the answer only as much as it moves that space) where its eigenvalues stand
        clear of float32 rounding (resolved_in_float32)."""
        low = torch.float32 if R.dtype == torch.float64 and self.float32_ else R.dtype
        return self.power(R.to(low), -1.0, 1.0 + self.refine_damping).to(R.dtype)

    def inverse(self, B: Tensor) -> Tensor:
        """The factored inverse applied to each row b of B (k, p): power(B, -1)."""
        return self.power(B, -1.0)

    def solve(self, B: Tensor) -> tuple[Tensor, SolveInfo]:
        """X (k, p) ~= A^{-1} b for each row b of B (k, p); the note says how close on a sample of rows."""
        if self.refine:
            return refine(self.op, B, self.refine, self._preconditioner, self.name, self._note(), self.low_)
        X = self.inverse(B)
        residual, note = measured(self.op, X, B, self.check, self.name,
                                  f"{type(self).__name__}(refine=4) (block CG steps on the true curvature; more where "
                                  "it still warns) or solver='cg' solves it", self._note())
        return X, SolveInfo(self.name, 0, residual, solved(residual), note)

    def _note(self) -> str:
        """What the factors cover."""
        f = self.factors
        note = (f"{self.name} of the Gauss-Newton matrix over {len(f.layers)} layers"
                + (f", exact diagonal on {f.diag_index.numel()} other parameters" if f.diag_index.numel() else ""))
        if not self.uniform_l2:
            note += "; l2 differs within a layer, its mean used there"
        return note


class KFAC(EKFAC):
    """K-FAC: the Kronecker eigenvalues themselves (one pass over the data); otherwise as EKFAC."""

    name = "kfac"
    eigen = False

