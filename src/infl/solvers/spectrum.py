"""Cheap spectral estimates of an operator."""

from __future__ import annotations

import torch

from ..operators import Operator


def top_eigenvalue(op: Operator, iters: int = 30, seed: int = 0, rtol: float = 1e-3) -> float:
    """Largest |eigenvalue| of A by power iteration (stops once it changes by < rtol)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(1, op.p, generator=gen, dtype=op.dtype).to(op.device)
    v /= v.norm()
    value = 0.0
    for _ in range(iters):
        w = op.matmat(v)
        new = float(w.norm())
        if new == 0:
            return 0.0
        v = w / new
        if abs(new - value) <= rtol * new:
            return new
        value = new
    return value
