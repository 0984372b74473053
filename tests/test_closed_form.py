"""Scores against MATH.md's closed form for binary logistic regression."""

import torch
import torch.nn.functional as F
from torch import nn

import infl
from infl.testing import logistic_scores

from conftest import make_blobs, trained


def margin_loss(out, y):
    """Logistic loss log(1 + exp(-y f)), y in {-1, +1}."""
    return F.softplus(-y * out.squeeze(-1))


def test_binary_logistic_scores_equal_closed_form():
    X, c = make_blobs(70, 4, 2, seed=5)
    Xt, ct = make_blobs(9, 4, 2, seed=6)
    y, yt = (2 * c - 1).double(), (2 * ct - 1).double()
    l2 = 0.1
    model = trained(nn.Linear(4, 1, bias=False).double(), margin_loss, l2, X, y)
    theta = model.weight.detach().reshape(-1)
    expected = logistic_scores(theta, X, y, Xt, yt, l2)
    for solver in ("exact", infl.CG(tol=1e-12)):
        S = infl.Influence(model, margin_loss, l2=l2, solver=solver).fit((X, y)).scores((Xt, yt))
        torch.testing.assert_close(S, expected, rtol=1e-8, atol=1e-12)
    assert S.dtype == torch.float64


def test_signs_follow_math_md():
    """The training point itself is helpful to its own prediction: self-influence <= 0."""
    X, c = make_blobs(40, 3, 2, seed=7)
    y = (2 * c - 1).double()
    model = trained(nn.Linear(3, 1, bias=False).double(), margin_loss, 0.1, X, y)
    v = infl.Influence(model, margin_loss, l2=0.1).fit((X, y)).self_influence()
    assert (v <= 0).all() and (v < 0).any()
