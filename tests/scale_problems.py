"""Solvers shared by the scale tests and the processes they launch."""

from __future__ import annotations

import infl
from conftest import make_logreg as logreg, make_mlp as mlp  # noqa: F401  (the launched processes use them too)

# fixed seeds and depth: the same sampled batches in every process
SOLVERS = {"exact": "exact", "cg": infl.CG(tol=1e-10),
           "lissa": infl.LiSSA(depth=60, batch_size=25, scale=10.0, seed=3), "ekfac": "ekfac"}
