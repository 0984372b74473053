"""Influence against actual leave-one-out retraining: the sign and the 1/n scale."""

import numpy as np
import torch

import infl
from infl.validate import leave_one_out, retrain_without

from conftest import cross_entropy, make_blobs, trained


def test_loo_agrees_with_influence():
    """n = 300 keeps removal of one point a small perturbation, where the first-order prediction holds."""
    X, y = make_blobs(300, 5, 3, seed=1)
    Xt, yt = make_blobs(3, 5, 3, seed=2)
    model = trained(torch.nn.Linear(5, 3).double(), cross_entropy, 0.05, X, y)
    inf = infl.Influence(model, cross_entropy, l2=0.05).fit((X, y))
    test = (Xt, yt)
    top = np.argsort(-inf.scores(test)[0].abs().numpy())[:15]
    res = leave_one_out(inf, test, top)
    assert res.predicted.shape == res.actual.shape == (3, 15)
    assert res.pearson[0] > 0.99 and res.spearman[0] > 0.95
    # same scale, not just correlated: the fitted slope of actual on predicted is ~1
    slope = np.polyfit(res.predicted[0], res.actual[0], 1)[0]
    assert 0.9 < slope < 1.15


def test_retrain_without_removes_exactly_one_point(logreg):
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    theta = retrain_without(inf, 4)
    keep = torch.arange(logreg.X.shape[0]) != 4
    obj = inf.objective_
    n = logreg.X.shape[0]
    g = torch.func.grad(lambda t: obj.losses(t, logreg.X[keep], logreg.y[keep]).sum() / n
                        + 0.5 * logreg.l2 * t.square().sum())(theta)
    assert g.abs().max() < 1e-8
