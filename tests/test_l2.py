"""Per-parameter l2: {parameter name: l2} in R, H, retraining and the solvers' floor."""

import numpy as np
import pytest
import torch

import infl
from infl.linear import curvature_operator, make_objective
from infl.objective import Objective
from infl.operators import GaussNewton, Hessian
from infl.validate import leave_one_out

from conftest import cross_entropy, make_blobs, trained


def risk_by_name(obj: Objective, l2: dict, X, y):
    """R(theta) written out by parameter name, independently of Objective.l2."""
    def risk(theta):
        params = obj.unflatten(theta)
        penalty = sum(0.5 * (torch.as_tensor(v, dtype=theta.dtype) * params[k].square()).sum() for k, v in l2.items())
        return obj.losses(theta, X, y).mean() + penalty
    return risk


def fd_hessian(risk, theta, h=1e-5):
    g = torch.func.grad(risk)
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    return torch.stack([(g(theta + h * e) - g(theta - h * e)) / (2 * h) for e in eye])


def test_mixed_l2_hessian_matches_finite_differences(mlp):
    l2 = {"0.weight": 0.3, "2.weight": torch.linspace(0.0, 0.2, 18, dtype=torch.float64).view(3, 6)}
    obj = Objective(mlp.model, mlp.loss_fn, l2)
    ref = fd_hessian(risk_by_name(obj, l2, mlp.X, mlp.y), obj.theta)
    torch.testing.assert_close(Hessian(obj, mlp.X, mlp.y, 17).to_dense(), ref, rtol=1e-6, atol=1e-7)
    # biases are unnamed: l2 = 0 there, so the smallest l2 is 0
    assert obj.l2_min == 0.0 and obj.l2.shape == (obj.p,)
    # Gauss-Newton carries the same l2 diagonal: G - H has no l2 part
    G = GaussNewton(obj, mlp.X, mlp.y, 17).to_dense()
    G0 = GaussNewton(Objective(mlp.model, mlp.loss_fn, 0.0), mlp.X, mlp.y, 17).to_dense()
    torch.testing.assert_close(G - G0, torch.diag(obj.l2), rtol=0, atol=1e-12)


def test_mixed_l2_linear_closed_form_matches_finite_differences(logreg):
    l2 = {"weight": 0.05}
    fast = make_objective(logreg.model, logreg.loss_fn, l2, logreg.X[:2])
    op = curvature_operator(fast, logreg.X, logreg.y, 32)
    ref = fd_hessian(risk_by_name(fast, l2, logreg.X, logreg.y), fast.theta)
    torch.testing.assert_close(op.to_dense(), ref, rtol=1e-6, atol=1e-7)
    V = torch.randn(4, fast.p, dtype=torch.float64)
    torch.testing.assert_close(op.matmat(V), V @ ref, rtol=1e-6, atol=1e-7)


def test_unpenalised_bias_scores_match_leave_one_out():
    X, y = make_blobs(300, 5, 3, seed=21)
    Xt, yt = make_blobs(2, 5, 3, seed=22)
    l2 = {"weight": 0.05}
    model = trained(torch.nn.Linear(5, 3).double(), cross_entropy, l2, X, y)
    inf = infl.Influence(model, cross_entropy, l2=l2).fit((X, y))
    assert inf.grad_norm_ < 1e-6  # trained to the optimum of the mixed-l2 objective
    top = np.argsort(-inf.scores((Xt, yt))[0].abs().numpy())[:12]
    res = leave_one_out(inf, (Xt, yt), top)
    assert res.pearson.min() > 0.99
    slope = np.polyfit(res.predicted[0], res.actual[0], 1)[0]
    assert 0.9 < slope < 1.15
    # a float l2 on the same model is a different objective: not stationary, and it warns so
    with pytest.warns(UserWarning, match="not at a stationary point"):
        infl.Influence(model, cross_entropy, l2=0.05).fit((X, y))


@pytest.mark.filterwarnings("ignore:the model is not at a stationary point")
def test_lissa_refuses_the_singular_hessian_an_unpenalised_softmax_bias_leaves(logreg):
    """The smallest l2 is 0, which bounds nothing, so LiSSA estimates the floor: 0 to rounding (the softmax does not
    change when one constant is added to every bias), refused with the fix."""
    refused = r"eigenvalue of about \S+ (<= 0|\(0 to this precision\)).*Add damping"
    with pytest.raises(infl.CurvatureError, match=refused):
        infl.Influence(logreg.model, logreg.loss_fn, l2={"weight": 0.05}, solver="lissa").fit(logreg.train)
    from infl.operators import Dense

    singular = torch.diag(torch.tensor([2.0, 1.0, 1e-15], dtype=torch.float64))  # positive, but 0 to rounding
    with pytest.raises(infl.CurvatureError, match=refused):  # a tiny positive estimate was taken as the floor
        infl.LiSSA().fit(Dense(singular))


@pytest.mark.parametrize("l2, match", [
    ({"weights": 0.1}, r"not trainable parameters.*valid names: weight, bias"),
    ({"weight": -1.0}, r"l2\['weight'\] must be a finite number >= 0"),
    ({"weight": torch.ones(2)}, r"has shape \(2,\) but the parameter has shape \(3, 5\)"),
    ("0.1", r"l2 must be a finite number >= 0 .* or a mapping"),
])
def test_bad_l2_is_refused_with_the_fix(logreg, l2, match):
    with pytest.raises(infl.InputError, match=match):
        infl.Influence(logreg.model, logreg.loss_fn, l2=l2).fit(logreg.train)
