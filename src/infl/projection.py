"""A seeded random projection P (k, p) of gradients and curvature, in plain PyTorch (TRAK, Park et al. 2023).

P has i.i.d. N(0, 1/k) entries, so E[P^T P] = I. It is never stored: rows
[BLOCK * j, BLOCK * (j + 1)) are torch.randn(BLOCK, p) / sqrt(k) from a CPU
generator seeded with seed * 1_000_003 + j, regenerated on demand (or
cached when memory allows).

Both sides are projected and the curvature is projected with them:

    score_P(z_i, z_test) = -(P g_test)^T (P H P^T)^{-1} (P g_i),

which is exactly I_up,loss of the model restricted to the k-dimensional
parameter subspace theta_hat + P^T u (and equals the full score when k = p).
The query then needs only P g_test, one k x k solve and products with the
stored P g_i.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from .budget import PROJECTION_BLOCK
from .inputs import batches
from .operators import Operator

BLOCK = PROJECTION_BLOCK  # rows of P drawn at once; the memory plan counts them


class Projection:
    """P (k, p), generated in blocks of BLOCK rows from `seed`."""

    def __init__(self, k: int, p: int, seed: int, dtype: torch.dtype, device: torch.device,
                 cache: bool = True) -> None:
        self.k, self.p, self.seed, self.dtype, self.device = k, p, seed, dtype, device
        self._cache: dict[int, Tensor] | None = {} if cache else None

    def block(self, j: int) -> Tensor:
        """Rows [BLOCK j, BLOCK (j + 1)) of P, (<= BLOCK, p)."""
        if self._cache is not None and j in self._cache:
            return self._cache[j]
        rows = min(BLOCK, self.k - BLOCK * j)
        gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + j)
        B = (torch.randn(rows, self.p, generator=gen, dtype=torch.float64) / math.sqrt(self.k))
        B = B.to(dtype=self.dtype, device=self.device)
        if self._cache is not None:
            self._cache[j] = B
        return B

    def blocks(self) -> Iterator[tuple[slice, Tensor]]:
        """(rows of P, those rows) for every block."""
        for j, rows in enumerate(batches(self.k, BLOCK)):
            yield rows, self.block(j)

    def apply(self, G: Tensor) -> Tensor:
        """P g for each row g of G (b, p) -> (b, k)."""
        return torch.cat([G @ B.T for _, B in self.blocks()], dim=1)

    def rows(self, r: slice) -> Tensor:
        """Rows r.start..r.stop-1 of P, (r.stop - r.start, p), from the blocks holding them."""
        parts = []
        for j in range(r.start // BLOCK, (r.stop - 1) // BLOCK + 1):
            lo, hi = max(r.start, BLOCK * j), min(r.stop, BLOCK * (j + 1))
            parts.append(self.block(j)[lo - BLOCK * j:hi - BLOCK * j])
        return torch.cat(parts)

    def curvature_rows(self, op: Operator, r: slice, rows_per_product: int = BLOCK) -> Tensor:
        """Rows r of P A P^T, (r.stop - r.start, k): that many products with op, `rows_per_product` rows at a
        time."""
        B = self.rows(r)
        AB = torch.cat([op.matmat(B[s]) for s in batches(B.shape[0], rows_per_product)])  # (rows, p) = B A
        return torch.cat([AB @ C.T for _, C in self.blocks()], dim=1)


class Identity:
    """P = I (k = p): gradients stored in full and the curvature in full."""

    def __init__(self, p: int) -> None:
        self.k = self.p = p

    def apply(self, G: Tensor) -> Tensor:
        return G

    def curvature(self, op: Operator, rows_per_product: int = BLOCK) -> Tensor:
        return op.to_dense(rows_per_product)
