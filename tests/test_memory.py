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


def test_the_exact_gauss_newton_plan_counts_the_output_jacobians_it_forms(mlp):
    """to_dense holds a chunk of per-example output Jacobians (rows x m x p) and its product with Lambda."""
    plan = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver="exact", curvature="gauss-newton").plan(mlp.train)
    p, m, n = sum(t.numel() for t in mlp.model.parameters()), mlp.model(mlp.X[:1]).numel(), len(mlp.y)
    assert plan[f"output Jacobians while formed ({n} x {m} x {p}, x2)"] == 2 * n * m * p * 8
    hessian = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver="exact").plan(mlp.train)
    assert not any(item.startswith("output Jacobians") for item in hessian)
    from infl.linear import make_objective
    from infl.operators import GaussNewton

    obj = make_objective(mlp.model, mlp.loss_fn, mlp.l2, mlp.X[:2])  # a process holding no rows plans too
    assert sum(GaussNewton(obj, mlp.X[:0], mlp.y[:0]).dense_footprint().values()) == 0


def test_plan_leaves_a_fitted_influence_as_it_was(logreg):
    """plan reads data only to size things: it used to reset a fitted Influence (the next query said fit)."""
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    before = inf.scores(logreg.test)
    X, y = logreg.train
    assert inf.plan((X[:10], y[:10]))["gradient chunk (10 x 18, x4)"] == 4 * 10 * 18 * 8
    assert inf.n_train == len(y) and inf.scores(logreg.test).equal(before)


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


@pytest.mark.parametrize("solver", ["lissa", "arnoldi", infl.EKFAC(refine=2)])
def test_the_plan_lists_a_smallest_eigenvalue_estimate_only_where_one_runs(mlp, solver):
    """None runs where l2 + damping bounds the curvature (Gauss-Newton); the MLP's Hessian has no known floor."""
    estimate = lambda curvature: any(item.startswith("smallest-eigenvalue estimate") for item in  # noqa: E731
                                     infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver=solver,
                                                    curvature=curvature).plan(mlp.train))
    assert estimate("hessian") and not estimate("gauss-newton")
    assert not any(item.startswith("smallest-eigenvalue estimate") for item in  # a given depth needs no floor
                   infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver=infl.LiSSA(depth=50)).plan(mlp.train))
    if isinstance(solver, infl.EKFAC):  # it needs only positive semi-definiteness, which Gauss-Newton has at l2 = 0
        plan = infl.Influence(mlp.model, mlp.loss_fn, l2=0.0, solver=solver, curvature="gauss-newton").plan(mlp.train)
        assert not any(item.startswith("smallest-eigenvalue estimate") for item in plan)


def test_exact_refuses_above_its_limit_and_names_the_size(mlp):
    inf = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, solver=infl.Exact(max_params=10))
    with pytest.raises(infl.InputError, match=r"MiB while it is formed.*max_params=10") as error:
        inf.fit(mlp.train)
    p = sum(t.numel() for t in mlp.model.parameters())
    assert f"up to {3 * p * p * 8 / 2**20:.3g} MiB" in str(error.value)  # formed and symmetrised: three p x p


# --- the index's plan (infl.budget): sizes computed, nothing built ---------------------------------------------------

MNIST = dict(n=55000, p=7850, itemsize=8, data_bytes=55000 * 785 * 8, baseline=0)


@pytest.mark.parametrize("budget", [None, 4 * 10**9])
def test_index_chunks_are_at_most_16_MiB_whatever_the_gradient_batch(budget):
    from infl.budget import index_plan
    plan = index_plan(budget, k=7850, projected=False, grad_rows=512, **MNIST)  # 512 rows would be 30.7 MiB
    assert plan.chunk_rows * 7850 * 8 <= 16 * 2**20 and plan.chunk_rows == 16 * 2**20 // (7850 * 8)
    assert plan.grad_rows <= plan.chunk_rows  # computed chunk by chunk: the plan counts no more rows
    assert f"gradient chunks of <= {plan.chunk_rows} rows x 7850" in plan.describe()
    wide = index_plan(None, n=100, p=5 * 10**6, k=5 * 10**6, itemsize=4, data_bytes=0, projected=False, baseline=0)
    assert wide.chunk_rows == 1  # a row above 16 MiB: one row per chunk


def test_index_budget_refusal_lists_what_cannot_be_chunked():
    from infl.budget import index_plan
    with pytest.raises(infl.InputError) as refused:
        index_plan(600 * 2**20, **{**MNIST, "baseline": 100 * 2**20, "data_bytes": 480 * 2**20}, k=256,
                   projected=True)
    message = str(refused.value)
    assert message.startswith("max_memory=600 MiB is too small: process so far (torch, model) 100 MiB, "
                              "training data 480 MiB, curvature 256 x 256 and its Cholesky factor (x3) 1.5 MiB, "
                              "projection P (256 x 7850) 15.3 MiB, curvature products of one block of P (256 x 7850) "
                              "15.3 MiB already need 612 MiB"), message
    assert message.endswith("raise max_memory to at least 653MiB (the need + 5%: the process's own memory varies "
                            "by run) or lower project")  # 622 MiB needed, + 5%: a
    # rerun's own memory differs a little, and advice 1 MiB short was refused on the rerun
    assert "listed in the plan" not in message
    fits = index_plan(622 * 2**20, **{**MNIST, "baseline": 100 * 2**20, "data_bytes": 480 * 2**20}, k=256,
                      projected=True)
    assert fits.grad_rows >= 1 and fits.product_rows >= 1
