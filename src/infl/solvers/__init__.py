"""Solvers for A X = B on a symmetric positive definite curvature operator.

Each has fit(op) (work done once) and solve(B) -> (X, SolveInfo), B and X (k, p).
"""

from .arnoldi import Arnoldi
from .base import SolveInfo
from .cg import CG, cg
from .exact import Exact
from .kfac import EKFAC, KFAC
from .lissa import LiSSA
from .nystrom import NystromPreconditioner, nystrom
from .spectrum import top_eigenvalue

__all__ = ["Arnoldi", "CG", "EKFAC", "Exact", "KFAC", "LiSSA", "NystromPreconditioner", "SolveInfo", "cg", "nystrom", "top_eigenvalue"]
