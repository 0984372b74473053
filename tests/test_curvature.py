"""Gauss-Newton curvature and the smooth hinge loss."""

import numpy as np
import pytest
import torch
from torch import nn

import infl
from infl.errors import CurvatureError, InputError
from infl.linear import curvature_operator, make_objective
from infl.losses import make_smooth_hinge, smooth_hinge
from infl.objective import Objective
from infl.operators import GaussNewton, Operator
from infl.testing import dense_scores

from conftest import make_blobs, trained


def dense_ggn(obj: Objective, X, y, l2):
    """(1/n) sum_i J_i^T Lambda_i J_i + l2 I with J from jacrev and Lambda from hessian, (p, p)."""
    J = torch.func.jacrev(lambda t: obj.outputs(t, X))(obj.theta)  # (n, C, p)
    out = obj.outputs(obj.theta, X)
    Lam = torch.stack([torch.func.hessian(lambda f: obj.loss_fn(f[None], y[i:i + 1]).sum())(out[i])
                       for i in range(X.shape[0])])  # (n, C, C)
    return torch.einsum("ncp,ncd,ndq->pq", J, Lam, J) / X.shape[0] + l2 * torch.eye(obj.p, dtype=torch.float64)


def dense_hessian(obj: Objective, X, y):
    """The Hessian of R = mean loss + (l2/2)||theta||^2 by torch.func.hessian, (p, p)."""
    return torch.func.hessian(lambda t: obj.losses(t, X, y).mean() + obj.l2 / 2 * (t * t).sum())(obj.theta)


def test_gauss_newton_matches_dense_reference(mlp):
    obj = Objective(mlp.model, mlp.loss_fn, mlp.l2)
    op = GaussNewton(obj, mlp.X, mlp.y, batch_size=11)
    G = dense_ggn(obj, mlp.X, mlp.y, mlp.l2)
    torch.testing.assert_close(op.to_dense(), G, rtol=1e-9, atol=1e-11)  # from per-example Jacobians
    torch.testing.assert_close(Operator.to_dense(op), G, rtol=1e-9, atol=1e-11)  # from products
    sub = torch.tensor([1, 5, 9])
    torch.testing.assert_close(op.subset(sub).to_dense(), dense_ggn(obj, mlp.X[sub], mlp.y[sub], mlp.l2),
                               rtol=1e-9, atol=1e-11)


def test_gauss_newton_products_follow_theta_through_the_kept_output_hessians(mlp, monkeypatch):
    """Products keep each batch's output Hessians; any change of the outputs (theta in place, through .data or
    replaced; a frozen layer changed through the module) must not reuse them."""
    from infl import operators

    obj = Objective(mlp.model, mlp.loss_fn, mlp.l2)
    op = GaussNewton(obj, mlp.X, mlp.y, batch_size=11)
    V = torch.randn(3, obj.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    first = op.matmat(V)
    assert op._lams and torch.equal(op.matmat(V), first)  # kept, and the same answer from them
    obj.theta.add_(0.3 * torch.randn_like(obj.theta))  # in place
    torch.testing.assert_close(op.matmat(V), (dense_ggn(obj, mlp.X, mlp.y, mlp.l2) @ V.T).T, rtol=1e-9, atol=1e-11)
    obj.theta = obj.theta + 0.3  # replaced
    torch.testing.assert_close(op.matmat(V), (dense_ggn(obj, mlp.X, mlp.y, mlp.l2) @ V.T).T, rtol=1e-9, atol=1e-11)
    with torch.no_grad():
        obj.theta.data.mul_(0.5)  # bypasses the version counter
    torch.testing.assert_close(op.matmat(V), (dense_ggn(obj, mlp.X, mlp.y, mlp.l2) @ V.T).T, rtol=1e-9, atol=1e-11)
    frozen = nn.Sequential(nn.Linear(mlp.X.shape[1], 6), nn.Tanh(), nn.Linear(6, 3)).double()
    frozen[0].requires_grad_(False)  # not in theta: changes reach the outputs, not obj.theta
    fobj = Objective(frozen, mlp.loss_fn, mlp.l2)
    fop = GaussNewton(fobj, mlp.X, mlp.y, batch_size=11)
    W = torch.randn(2, fobj.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fop.matmat(W)
    with torch.no_grad():
        frozen[0].weight.mul_(3.0)
    torch.testing.assert_close(fop.matmat(W), (dense_ggn(fobj, mlp.X, mlp.y, mlp.l2) @ W.T).T, rtol=1e-9, atol=1e-11)
    monkeypatch.setattr(operators, "LAMBDA_CACHE_BYTES", 0)
    bounded = GaussNewton(obj, mlp.X, mlp.y, batch_size=11)
    bounded.matmat(V)
    assert not bounded._lams  # above the size limit nothing is kept


def test_gauss_newton_dense_from_jacobians_on_a_cnn_with_per_parameter_l2():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(),
                          nn.Linear(32, 3)).double()
    X, y = torch.randn(13, 36, dtype=torch.float64), torch.randint(0, 3, (13,))
    loss = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    obj = Objective(model, loss, {"1.weight": 0.1, "4.bias": 0.02})
    op = GaussNewton(obj, X, y, batch_size=4)
    torch.testing.assert_close(op.to_dense(), Operator.to_dense(op), rtol=1e-9, atol=1e-11)
    assert float(torch.linalg.eigvalsh(op.to_dense())[0]) >= -1e-12


def test_gauss_newton_equals_hessian_for_affine_outputs(logreg):
    obj = Objective(logreg.model, logreg.loss_fn, logreg.l2)
    G = GaussNewton(obj, logreg.X, logreg.y, 32).to_dense()
    fast = make_objective(logreg.model, logreg.loss_fn, logreg.l2, logreg.X[:2])
    torch.testing.assert_close(G, curvature_operator(fast, logreg.X, logreg.y, 32, "gauss-newton").to_dense(),
                               rtol=1e-9, atol=1e-12)


def test_gauss_newton_stays_positive_definite_where_the_hessian_is_not(mlp):
    with torch.no_grad():
        for p in mlp.model.parameters():
            p.mul_(8.0)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CurvatureError, match="curvature='gauss-newton'"):
            infl.Influence(mlp.model, mlp.loss_fn, l2=1e-3).fit(mlp.train)
        inf = infl.Influence(mlp.model, mlp.loss_fn, l2=1e-3, curvature="gauss-newton").fit(mlp.train)
    v = inf.self_influence()
    assert torch.isfinite(v).all() and (v <= 1e-12).all()  # -g^T G^{-1} g <= 0 for a PSD G


def test_gauss_newton_of_a_loss_not_convex_in_the_outputs_uses_lambdas_psd_part():
    """log(1 + r^2) has d^2/dr^2 < 0 for |r| > 1: J^T Lambda J is indefinite there. The Gauss-Newton matrix clips
    Lambda_i's negative eigenvalues, so it is J^T Lambda_+ J (own reference) and positive definite with l2 > 0."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    X, Y = torch.randn(30, 3, dtype=torch.float64), 3 * torch.randn(30, 2, dtype=torch.float64)
    loss = lambda out, t: torch.log1p((out - t) ** 2).sum(1)  # noqa: E731
    obj = Objective(model, loss, 1e-2)
    raw = dense_ggn(obj, X, Y, 1e-2)
    assert float(torch.linalg.eigvalsh(raw)[0]) < 0  # the unclipped matrix is indefinite here
    J = torch.func.jacrev(lambda t: obj.outputs(t, X))(obj.theta)  # (n, 2, p)
    r = obj.outputs(obj.theta, X) - Y
    lam_plus = (2 * (1 - r**2) / (1 + r**2) ** 2).clamp_min(0)  # Lambda_i is diagonal: d^2 log(1 + r^2) / dr^2
    want = torch.einsum("ncp,nc,ncq->pq", J, lam_plus, J) / 30 + 1e-2 * torch.eye(obj.p, dtype=torch.float64)
    op = GaussNewton(obj, X, Y, batch_size=7)
    torch.testing.assert_close(op.to_dense(), want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(Operator.to_dense(op), want, rtol=1e-9, atol=1e-12)


def test_gauss_newton_of_a_linear_model_with_a_loss_not_convex_in_the_outputs_is_clipped_too():
    """The closed-form path for outputs affine in theta (one nn.Linear) takes Lambda_i's PSD part as well under
    curvature='gauss-newton' (it used the raw Hessian, indefinite here); the Hessian stays the Hessian."""
    torch.manual_seed(5)
    model = nn.Linear(3, 2).double()
    X, Y = torch.randn(30, 3, dtype=torch.float64), 3 * torch.randn(30, 2, dtype=torch.float64)
    loss = lambda out, t: torch.log1p((out - t) ** 2).sum(1)  # noqa: E731
    fast = make_objective(model, loss, 1e-2, X[:2])
    slow = Objective(model, loss, 1e-2)
    gn = curvature_operator(fast, X, Y, 7, "gauss-newton")
    assert gn.name == "gauss-newton" and type(fast).__name__ == "LinearObjective"
    torch.testing.assert_close(gn.to_dense(), GaussNewton(slow, X, Y, 7).to_dense(), rtol=1e-9, atol=1e-12)
    assert float(torch.linalg.eigvalsh(gn.to_dense())[0]) >= 1e-2 * (1 - 1e-9)
    torch.testing.assert_close(curvature_operator(fast, X, Y, 7, "hessian").to_dense(), dense_hessian(slow, X, Y),
                               rtol=1e-9, atol=1e-12)


def test_psd_part_spares_dominant_matrices_and_clips_the_others():
    from infl.operators import psd_part

    p = torch.softmax(torch.randn(4, 5, dtype=torch.float64), 1)
    ce = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # cross-entropy's output Hessians: kept exactly
    assert psd_part(ce) is ce
    mixed = torch.cat([ce, torch.diag(torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64))[None]])
    out = psd_part(mixed)
    torch.testing.assert_close(out[:4], ce, rtol=0, atol=0)
    torch.testing.assert_close(out[4], torch.diag(torch.tensor([1.0, 0.0, 0.5, 0.0, 3.0], dtype=torch.float64)))
    # a small negative curvature among large positive ones, float32 and many outputs: still clipped
    wide = torch.full((1000,), 2.0)
    wide[7] = -5e-4
    assert float(torch.linalg.eigvalsh(psd_part(torch.diag(wide)[None]))[0].min()) >= 0
    a = 8.6e-6
    swap = torch.zeros(1, 10, 10)
    swap[0, 0, 1] = swap[0, 1, 0] = a  # eigenvalues +-a
    assert float(torch.linalg.eigvalsh(psd_part(swap)).min()) >= -1e-12
    p32 = torch.softmax(torch.randn(3, 1000), 1)
    ce32 = torch.diag_embed(p32) - p32[:, :, None] * p32[:, None, :]
    assert psd_part(ce32) is ce32  # cross-entropy in float32 with 1000 classes: no eigendecompositions


def test_a_curvature_error_under_gauss_newton_does_not_advise_gauss_newton(mlp):
    """The solvers' advice 'add damping, or use curvature=gauss-newton' is rewritten when that is the curvature
    in use (it is then positive semi-definite: l2 + damping is the fix); under the Hessian it stays."""
    from infl.solvers import Exact

    class Refusing(Exact):
        def solve(self, B):
            raise CurvatureError("the operator is not positive definite. Add damping, or use curvature='gauss-newton'")

    for curvature, kept in (("gauss-newton", False), ("hessian", True)):
        inf = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, curvature=curvature, solver=Refusing()).fit(mlp.train)
        with pytest.raises(CurvatureError, match="Add damping") as caught:
            inf.s_test((mlp.Xt[:1], mlp.yt[:1]))
        assert ("use curvature='gauss-newton'" in str(caught.value)) == kept
        assert ("larger l2" in str(caught.value)) != kept


def test_unknown_curvature(logreg):
    with pytest.raises(InputError, match="unknown curvature 'fisher'; choose one of hessian, gauss-newton"):
        infl.Influence(logreg.model, logreg.loss_fn, curvature="fisher")


def test_smooth_hinge_tends_to_hinge():
    s = torch.linspace(-2, 3, 51, dtype=torch.float64)
    y = torch.ones_like(s)
    for t, tol in ((0.1, 0.07), (1e-3, 7e-4)):
        assert (smooth_hinge(s, y, t) - torch.clamp(1 - s, min=0)).abs().max() <= tol
    with pytest.raises(InputError, match="temperature t must be a finite number > 0"):
        make_smooth_hinge(0.0)


def test_smooth_hinge_is_finite_at_extreme_margins_and_temperatures():
    """(1 - s) / t overflowed to inf (a huge margin, or a tiny t) and gave an infinite loss; it is the hinge there.
    The derivatives on the margin itself (s = 1) stay sigmoid(0) and sigmoid'(0) / t; a t below the dtype's
    smallest normal number, or a bool, is refused."""
    from torch.func import grad, hessian

    for dtype, t in ((torch.float32, 1e-30), (torch.float64, 1e-300), (torch.float64, 0.1)):
        s = torch.tensor([-1e10, 1e10], dtype=dtype)
        torch.testing.assert_close(smooth_hinge(s, torch.ones_like(s), t), torch.tensor([1 + 1e10, 0.0], dtype=dtype))
    one, t = torch.ones(1, dtype=torch.float64), 0.1
    assert float(grad(lambda f: smooth_hinge(f, one, t).sum())(one)) == -0.5
    assert float(hessian(lambda f: smooth_hinge(f, one, t).sum())(one)) == pytest.approx(0.25 / t)
    with pytest.raises(InputError, match="below the smallest normal torch.float32"):
        smooth_hinge(torch.zeros(2), torch.ones(2), 1e-46)
    with pytest.raises(InputError, match="finite number > 0, got True"):
        make_smooth_hinge(True)
    assert smooth_hinge(one, one, np.float32(0.5)).item() == pytest.approx(0.5 * np.log(2))


def test_svm_with_smooth_hinge_matches_dense_reference():
    X, c = make_blobs(60, 3, 2, seed=9)
    Xt, ct = make_blobs(5, 3, 2, seed=10)
    y, yt = (2 * c - 1).double(), (2 * ct - 1).double()
    loss = make_smooth_hinge(0.1)
    model = trained(nn.Linear(3, 1).double(), loss, 0.05, X, y)
    S = infl.Influence(model, loss, l2=0.05).fit((X, y)).scores((Xt, yt))
    torch.testing.assert_close(S, dense_scores(model, loss, (X, y), (Xt, yt), 0.05), rtol=1e-7, atol=1e-10)


def test_float32_forms_multiply_like_their_operators_and_leave_the_model_alone(mlp, logreg):
    """in_float32 (what preconditioners are built on): the same products to float32 rounding for the Hessian,
    the damped Gauss-Newton matrix and a linear model's closed form; the model and the float64 operator are
    untouched. A model with float64 tensors of its own (not parameters or buffers) keeps the float64 operator."""
    from infl.operators import Hessian, in_float32

    before = [t.clone() for t in mlp.model.parameters()]
    obj = Objective(mlp.model, mlp.loss_fn, {"0.weight": 0.1, "2.weight": 0.2})  # a per-entry l2 too
    lin = make_objective(logreg.model, logreg.loss_fn, logreg.l2)
    ops = [Hessian(obj, mlp.X, mlp.y, 11), GaussNewton(obj, mlp.X, mlp.y, 11) + 0.1,
           curvature_operator(lin, logreg.X, logreg.y, 32)]
    for op in ops:
        low = in_float32(op)
        V = torch.randn(3, op.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        assert low.dtype == torch.float32 and op.dtype == torch.float64
        torch.testing.assert_close(low.matmat(V.float()).double(), op.matmat(V), rtol=1e-5, atol=1e-6)
    assert all(a.dtype == torch.float64 and torch.equal(a, b) for a, b in zip(mlp.model.parameters(), before))

    class OwnConstant(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3).double()
            self.mix = torch.eye(3, dtype=torch.float64)  # a plain attribute: stays float64

        def forward(self, x):
            return self.lin(x) @ self.mix

    own = GaussNewton(Objective(OwnConstant(), mlp.loss_fn, 0.1), mlp.X, mlp.y)
    assert in_float32(own) is own

    def strict(out, t):  # any error a user's loss raises in float32 keeps the float64 form
        if out.dtype != torch.float64:
            raise ValueError("float64 outputs only")
        return mlp.loss_fn(out, t)

    picky = GaussNewton(Objective(mlp.model, strict, 0.1), mlp.X, mlp.y) + 0.1
    assert in_float32(picky) is picky
