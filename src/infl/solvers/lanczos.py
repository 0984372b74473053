"""Top eigenpairs of a symmetric operator by block Lanczos with full reorthogonalisation and thick restarts.

Each step multiplies the operator with a block of `block` vectors at once (one
batched pass over the data instead of `block` single-vector passes), so it
runs at the speed of batched products; the basis is capped at `max_dim`
vectors, and when full it restarts from the current top Ritz vectors and the
next block (Wu & Simon's thick restart), keeping the memory bounded.

A Ritz pair (theta, u = V^T y) has residual ||A u - theta u|| = ||R y_last||,
R the triangular factor of the next block and y_last the part of y on the
current block; a pair is converged when that is <= tol * |theta| (ARPACK's
criterion).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import Operator


DEFAULT_BLOCK = 16  # vectors per product unless told


def default_block(rank: int) -> int:
    """Vectors per product when none is given: min(rank, DEFAULT_BLOCK)."""
    return min(rank, DEFAULT_BLOCK)


def basis_size(rank: int, block: int) -> int:
    """The default cap on the Lanczos basis: 2 * rank + 2 * block vectors."""
    return 2 * rank + 2 * block


def top_eigenpairs(op: Operator, rank: int, *, tol: float = 1e-6, block: int | None = None,
                   max_dim: int | None = None, seed: int = 0, max_restarts: int = 30) -> tuple[Tensor, Tensor, bool]:
    """The `rank` largest eigenvalues (rank,) descending and eigenvectors as rows (rank, p) of op.

    block: vectors per product (default min(rank, 16)); max_dim: basis size
    (default 2 * rank + 2 * block, below p). When max_dim >= p the dense
    matrix is formed instead (p products, exact). Returns (lam, U, converged).
    """
    p = op.p
    block = block or default_block(rank)
    max_dim = max_dim or basis_size(rank, block)
    if max_dim >= p:
        lam, vecs = torch.linalg.eigh(op.to_dense())
        return lam.flip(0)[:rank], vecs.flip(1)[:, :rank].T.contiguous(), True
    if rank + 2 * block > max_dim:
        raise ValueError(f"max_dim {max_dim} must be at least rank + 2 * block = {rank + 2 * block}")
    gen = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(p, block, generator=gen, dtype=op.dtype)).Q.T.to(op.device).contiguous()
    basis = torch.empty(max_dim, p, dtype=op.dtype, device=op.device)  # one buffer: growing it would copy it
    basis[:block] = Q
    m, T = block, torch.zeros(block, block, dtype=op.dtype, device=op.device)  # basis rows m; V A V^T (m, m)
    restarts = 0
    while True:
        V = basis[:m]  # (m, p), a view
        W = op.matmat(Q)  # (b, p)
        T[m - block:, m - block:] = (Q @ W.T + W @ Q.T) / 2
        for _ in range(2):  # full reorthogonalisation, twice for stability
            W -= (W @ V.T) @ V
        theta, Y = torch.linalg.eigh(T)
        theta, Y = theta.flip(0), Y.flip(1)
        Qn, R = _next_block(W, V, float(theta.abs().max()), gen)  # W = R^T Qn^T
        k = min(rank, m)
        res = (R @ Y[m - block:, :k]).norm(dim=0)
        converged = m >= rank and bool((res <= tol * theta[:k].abs()).all())
        if converged or (m + block > max_dim and restarts == max_restarts):
            return theta[:rank], (Y[:, :rank].T @ V).contiguous(), converged
        Q = Qn.T.contiguous()
        if m + block <= max_dim:
            basis[m:m + block] = Q
            T = _grow(T, m + block)
            T[m:, m - block:m], T[m - block:m, m:] = R, R.T
            m += block
            continue
        keep = max(rank, max_dim - 2 * block)  # thick restart: top Ritz vectors + the next block
        restarts += 1
        basis[:keep] = Y[:, :keep].T @ V
        basis[keep:keep + block] = Q
        m = keep + block
        C = R @ Y[-block:, :keep]  # (b, keep): A u_i's component along the next block
        T = torch.zeros(keep + block, keep + block, dtype=op.dtype, device=op.device)
        T[:keep, :keep] = torch.diag(theta[:keep])
        T[keep:, :keep], T[:keep, keep:] = C, C.T


def _next_block(W: Tensor, V: Tensor, norm: float, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Qn (p, b) orthonormal and orthogonal to V's rows, and R (b, b) with W^T = Qn R. Where W has lost rank
    (the Krylov space is invariant there: |R_ii| at rounding level against the operator's norm), the column is
    a fresh random direction orthogonal to everything kept, and its row of R is 0 (no coupling)."""
    Qn, R = torch.linalg.qr(W.T)
    lost = R.diagonal().abs() <= 1e3 * torch.finfo(W.dtype).eps * max(norm, torch.finfo(W.dtype).tiny)
    if lost.any():
        fresh = torch.randn(W.shape[1], int(lost.sum()), generator=gen, dtype=W.dtype).to(W.device)
        keep = Qn[:, ~lost]
        for _ in range(2):
            fresh = fresh - V.T @ (V @ fresh) - keep @ (keep.T @ fresh)
        Qn = Qn.clone()
        Qn[:, lost] = torch.linalg.qr(fresh).Q
        R = R.clone()
        R[lost] = 0
    return Qn, R


def _grow(T: Tensor, m: int) -> Tensor:
    """T zero-padded to (m, m)."""
    out = T.new_zeros(m, m)
    out[:T.shape[0], :T.shape[1]] = T
    return out
