"""What each solver says it will hold, against what it holds after fit."""

from __future__ import annotations

import pytest

import infl


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_exact_plan_is_the_dense_factor(logreg):
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2, solver="exact")
    plan = inf.plan(logreg.train)
    inf.fit(logreg.train)
    p = inf.objective_.p
    assert plan[f"Cholesky factor ({p} x {p})"] == nbytes(inf.solver.factor)


def test_cg_and_arnoldi_plans_match_their_bases(mlp):
    for solver, held in ((infl.CG(rank=10), lambda s: s.precond.U), (infl.Arnoldi(rank=5), lambda s: s.U)):
        inf = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver=solver)
        plan = inf.plan(mlp.train)
        inf.fit(mlp.train)
        first = next(iter(plan.values()))
        assert first == nbytes(held(inf.solver))


@pytest.mark.parametrize("keep", [False, True])
def test_ekfac_plan_counts_its_factors(mlp, keep):
    inf = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver="ekfac", keep_train_grads=keep)
    plan = inf.plan(mlp.train)
    inf.fit(mlp.train)
    held = sum(nbytes(layer.A, layer.S, layer.QA, layer.QS, layer.lam) for layer in inf.solver.factors.layers)
    factor_items = [v for k, v in plan.items() if "factors and eigenvectors" in k]
    assert sum(factor_items) == held and len(factor_items) == 2
    kept = [v for k, v in plan.items() if k.startswith("training gradients kept")]
    assert kept == ([nbytes(inf.train_grads_)] if keep else [])


def test_exact_refuses_above_its_limit_and_names_the_size(mlp):
    inf = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver=infl.Exact(max_params=10))
    with pytest.raises(infl.InputError, match=r"GiB.*max_params=10"):
        inf.fit(mlp.train)
