"""Arnoldi's fit: the top eigenpairs of the Gauss-Newton matrix of the 100k-parameter MLP (benchmarks/deep.py's
task), by infl's block Lanczos against SciPy's ARPACK (implicitly restarted Lanczos, one product at a time),
measured in the same run: seconds, operator products, and the largest relative difference of the eigenvalues.

    python benchmarks/lanczos.py [--rank 100] [--tol 1e-6] [--blocks 16 8 32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from deep import task
from infl.objective import Objective
from infl.operators import GaussNewton
from infl.solvers.lanczos import top_eigenpairs
from task import cross_entropy

HERE = Path(__file__).resolve().parent


class Counted(GaussNewton):
    """The Gauss-Newton operator, counting the vectors it multiplies."""

    products = 0

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.products += V.shape[0]
        return super().matmat(V)


def arpack(op: Counted, rank: int, tol: float) -> np.ndarray:
    """ARPACK's top `rank` eigenvalues, descending, from single-vector products."""
    def mv(x: np.ndarray) -> np.ndarray:
        return op.matmat(torch.as_tensor(np.ascontiguousarray(x).reshape(1, -1))).reshape(-1).numpy()

    v0 = np.random.default_rng(0).standard_normal(op.p)
    lam = eigsh(LinearOperator((op.p, op.p), matvec=mv, dtype=np.float64), k=rank, which="LA", tol=tol, v0=v0,
                return_eigenvectors=False)
    return np.sort(lam)[::-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=100)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--blocks", type=int, nargs="+", default=[16, 8, 32])
    ap.add_argument("--l2", type=float, default=1e-3)
    args = ap.parse_args()
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    model, (X, y), _ = task(out, args.l2)
    op = Counted(Objective(model, cross_entropy, args.l2), X, y)
    op.matmat(torch.zeros(1, op.p, dtype=op.dtype))  # warm-up: torch.func's lazy imports, untimed
    rows = []
    for name in ["arpack", *(f"block {b}" for b in args.blocks)]:
        op.products = 0
        t0 = time.perf_counter()
        if name == "arpack":
            lam = arpack(op, args.rank, args.tol)
        else:
            lam, _, converged = top_eigenpairs(op, args.rank, tol=args.tol, block=int(name.split()[1]))
            lam = lam.numpy()
            name += "" if converged else " (not converged)"
        rows.append((name, time.perf_counter() - t0, op.products, lam))
    base_s, ref = rows[0][1], rows[0][3]
    print(f"\ntop {args.rank} eigenpairs of the Gauss-Newton matrix + {args.l2:g} I, MNIST 784-128-10 tanh MLP "
          f"(p = {op.p:,}, 4,000 points), tol {args.tol:g}, {time.strftime('%Y-%m-%d')}")
    print(f"{'method':>24s} {'seconds':>8s} {'arpack/this':>11s} {'products':>9s} {'max rel. diff of eigenvalues':>29s}")
    for name, sec, products, lam in rows:
        diff = float(np.max(np.abs(lam - ref) / np.abs(ref)))
        print(f"{name:>24s} {sec:8.1f} {base_s / sec:10.2f}x {products:9d} {diff:29.2e}")
    print(f"(eigenvalues {ref[0]:.4g} .. {ref[-1]:.4g}; differences against ARPACK's)")


if __name__ == "__main__":
    main()
