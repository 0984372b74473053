"""LiSSA: stochastic Neumann-series estimate of A^{-1} b (Agarwal, Bullins & Hazan 2016).

h_0 = b;  h_j = b + (I - A_j / scale) h_{j-1};  A^{-1} b ~= h_depth / scale,
with A_j the curvature on the j-th sampled mini-batch (damping included),
averaged over `repeats` independent runs. It converges when the eigenvalues
of A_j / scale lie in (0, 2); the error of the truncated series shrinks like
(1 - lam_min / scale)^depth.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor
from tqdm import tqdm

from ..errors import CurvatureError, DivergenceError, InputError, warn
from ..operators import Operator, damping_needed
from .base import SolveInfo, check_count, count, itemsize, measured, solved, unit_rows
from .spectrum import bottom_footprint, smallest_eigenvalue, top_eigenvalue


SETTLED = 0.1  # an estimated floor counts as settled when its Ritz residual is within this fraction of it
PROGRESS_AFTER = 10.0  # seconds a solve runs before its progress bar appears (progress=None)


class LiSSA:
    """LiSSA with its scale and depth chosen from the operator unless given.

    scale: default 1.2 x the largest eigenvalue seen on a few sampled batches.
    depth: default the number of steps that brings the truncation error
        (1 - floor / scale)^depth below `tol`, where floor = a lower bound on
        A's eigenvalues: the smallest l2 + damping where the data curvature is
        positive semi-definite (Gauss-Newton, linear models), else A's
        smallest eigenvalue estimated by Lanczos (a Ritz value, so from above).
    batch_size: examples per sampled curvature (the op must offer `subset`;
        otherwise the whole op is used every step).
    check: right-hand sides per solve whose residual against A is measured (one
        product each; 0 skips); a median above 0.1 warns.
    progress: a bar over the series' steps on stderr: None (default) once a
        solve has run PROGRESS_AFTER seconds, True from the start, False never.
    Raises DivergenceError, naming the knob to change, when the iterates blow up,
    and CurvatureError when the estimated smallest eigenvalue is not positive.
    """

    name = "lissa"

    def __init__(self, depth: int | None = None, repeats: int = 1, batch_size: int = 512,
                 scale: float | None = None, tol: float = 1e-3, max_depth: int = 20_000, seed: int = 0,
                 check: int = 8, progress: bool | None = None) -> None:
        repeats = count(repeats, "LiSSA repeats", "independent runs averaged", 1)
        batch_size = count(batch_size, "LiSSA batch_size", "examples per sampled batch", 1)
        max_depth = count(max_depth, "LiSSA max_depth", "the cap on the automatic depth", 1)
        if depth is not None:
            depth = count(depth, "LiSSA depth", "series terms; None: automatic", 1)
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise InputError(f"LiSSA scale must be a finite number > 0 or None (automatic), got {scale!r}")
        if not 0 < tol < 1:
            raise InputError(f"LiSSA tol must lie in (0, 1), got {tol!r}")
        self.depth, self.repeats, self.batch_size = depth, repeats, batch_size
        self.scale, self.tol, self.max_depth, self.seed = scale, tol, max_depth, seed
        self.check = check_count(check)
        if not (progress is None or isinstance(progress, bool)):
            raise InputError(f"LiSSA progress must be None (a bar once a solve takes {PROGRESS_AFTER:g} s), True or "
                             f"False, got {progress!r}")
        self.progress = progress

    def footprint(self, op: Operator) -> dict[str, int]:
        """Bytes held, by item: the recursion's vectors per right-hand side (nothing is kept between solves)."""
        return {f"per right-hand side (4 vectors of {op.p})": 4 * op.p * itemsize(op),
                **(bottom_footprint(op) if self.depth is None else {})}  # a given depth needs no floor

    def fit(self, op: Operator, floor: float | None = None) -> LiSSA:
        """Choose scale and depth for op; floor is a known lower bound on its eigenvalues (None: unknown, so
        estimated when the depth is automatic)."""
        self.op = op
        self.n = op.n if hasattr(op, "subset") else 0
        self.capped_ = False
        self.scale_ = self.scale if self.scale is not None else 1.2 * self._sampled_top()
        self.estimated_ = floor is None and self.depth is None
        self.floor, self.settled_ = self._estimated_floor() if self.estimated_ else (floor or 0.0, True)
        self.depth_ = self.depth if self.depth is not None else self._auto_depth()
        return self

    def _estimated_floor(self) -> tuple[float, bool]:
        """A's smallest eigenvalue by Lanczos (from above) and whether it has settled to within SETTLED of itself;
        CurvatureError if it is not positive, a warning (and converged=False later) if it has not settled."""
        lam, residual = smallest_eigenvalue(self.op, self.scale_, seed=self.seed)
        if lam <= 100 * torch.finfo(self.op.dtype).eps * self.scale_:  # <= 0, or 0 to this precision (singular)
            size = "<= 0" if lam <= 0 else "(0 to this precision)"
            raise CurvatureError(
                f"LiSSA: the curvature has an eigenvalue of about {lam:.3g} {size} (Lanczos estimate), so the series "
                f"cannot converge. Add damping > {damping_needed(self.op, lam):.3g}, or use curvature='gauss-newton'")
        settled = residual <= SETTLED * lam
        if not settled:
            warn(f"LiSSA: the estimate {lam:.3g} of the curvature's smallest eigenvalue has not settled (Ritz "
                 f"residual {residual:.3g}), so the true one may be smaller and the automatic depth too short. Pass "
                 "depth explicitly, use curvature='gauss-newton' (where l2 + damping bounds the spectrum), or "
                 "solver='cg'")
        return lam, settled

    def _sample(self, gen: torch.Generator) -> Operator:
        if not self.n or self.batch_size >= self.n:
            return self.op
        return self.op.subset(torch.randperm(self.n, generator=gen)[: self.batch_size])

    def _sampled_top(self, batches: int = 3) -> float:
        gen = torch.Generator().manual_seed(self.seed + 10_007)
        return max(top_eigenvalue(self._sample(gen), seed=self.seed + i) for i in range(batches))

    def _auto_depth(self) -> int:
        if self.floor <= 0:
            raise InputError(
                "LiSSA cannot choose its depth: the curvature has no known positive lower bound on its "
                "eigenvalues (smallest l2 + damping = 0). Pass damping > 0 (or l2 > 0 on every parameter), "
                "or set depth explicitly")
        rate = 1 - self.floor / self.scale_
        depth = math.ceil(math.log(self.tol) / math.log(rate)) if rate > 0 else 1
        if depth > self.max_depth:
            warn(
                f"LiSSA needs depth {depth} for truncation error {self.tol:g} (scale {self.scale_:.3g}, "
                f"floor {self.floor:.3g}) but max_depth={self.max_depth}; the result keeps a truncation error of "
                f"about {rate ** self.max_depth:.2g}. Raise max_depth or damping, or use solver='cg'")
            depth = self.max_depth
        self.capped_ = self.depth is None and depth == self.max_depth
        return depth

    def solve(self, B: Tensor) -> tuple[Tensor, SolveInfo]:
        """X (k, p) ~= A^{-1} b for each row b of B (k, p), averaged over repeats."""
        gen = torch.Generator().manual_seed(self.seed)
        unit, size = unit_rows(B)
        total = torch.zeros_like(B)
        bar = tqdm(total=self.depth_ * self.repeats, desc=f"LiSSA ({B.shape[0]} right-hand sides)", unit="step",
                   file=sys.stderr, disable=self.progress is False, delay=0 if self.progress else PROGRESS_AFTER)
        with bar:
            for _ in range(self.repeats):
                total += self._one_run(unit, gen, bar)
        X = total * (size / self.repeats)
        bound = (1 - self.floor / self.scale_) ** self.depth_ if self.floor > 0 else float("nan")
        source = " (estimated smallest eigenvalue)" if self.settled_ else " (estimated smallest eigenvalue, not settled)"
        note = (f"scale {self.scale_:.4g}, depth {self.depth_}, repeats {self.repeats}, batch {self.batch_size}, "
                f"floor {self.floor:.3g}{source if self.estimated_ else ''}; truncation bound {bound:.2g}")
        residual, note = measured(self.op, X, B, self.check, self.name,
                                  "Raise depth, repeats or batch_size, or use solver='cg'", note)
        within = residual is None or solved(residual, self.tol)  # the truncation bound holds for the residual
        return X, SolveInfo(self.name, self.depth_ * self.repeats, residual,
                            not self.capped_ and self.settled_ and within, note)

    def _one_run(self, B: Tensor, gen: torch.Generator, bar: tqdm) -> Tensor:
        H = B.clone()
        bnorm = B.norm(dim=1)
        # converging, ||h_j|| <= (j + 1) ||b|| and, with eigenvalues >= floor, <= (scale / floor) ||b||
        bound = 4 * self.scale_ / self.floor if self.floor > 0 else float("inf")
        for j in range(self.depth_):
            H = B + H - self._sample(gen).matmat(H) / self.scale_
            bar.update()
            norms = H.norm(dim=1)
            if not torch.isfinite(norms).all() or (norms > bnorm * min(10 * (j + 2), bound)).any():
                raise DivergenceError(
                    f"LiSSA diverged at step {j + 1} of {self.depth_}: the iterates grew past {float(norms.max()):.3g}. "
                    f"The scale {self.scale_:.3g} is below half the largest eigenvalue of a sampled curvature, or the "
                    f"curvature is not positive definite. Raise scale (e.g. scale={4 * self.scale_:.3g}), raise "
                    "batch_size, or add damping")
        return H / self.scale_
