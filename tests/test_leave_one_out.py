"""Influence against actual leave-one-out retraining: the sign and the 1/n scale."""

import numpy as np
import torch

import infl
from infl.validate import correlations, leave_one_out, retrain_without

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


def test_pert_loss_predicts_retraining_on_a_perturbed_point():
    """Moving x_j by delta changes the retrained test loss by about (1/n) I_pert,loss . delta."""
    import warnings

    from infl.train import minimize

    X, y = make_blobs(300, 5, 3, seed=11)
    Xt, yt = make_blobs(1, 5, 3, seed=12)
    model = trained(torch.nn.Linear(5, 3).double(), cross_entropy, 0.05, X, y)
    inf = infl.Influence(model, cross_entropy, l2=0.05).fit((X, y))
    obj, n = inf.objective_, X.shape[0]
    j = int(inf.scores((Xt, yt))[0].abs().argmax())
    P = inf.pert_loss((Xt, yt), [j])[0, 0]  # (5,)
    base = obj.losses(obj.theta, Xt, yt)[0]
    gen = torch.Generator().manual_seed(0)
    predicted, actual = [], []
    for _ in range(8):
        delta = 0.05 * torch.randn(5, generator=gen, dtype=torch.float64)
        Xp = X.clone()
        Xp[j] += delta
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theta = minimize(obj, Xp, y, tol=1e-11, max_iter=2000)
        actual.append(float(obj.losses(theta, Xt, yt)[0] - base))
        predicted.append(float(P @ delta) / n)
    r, _ = correlations(np.array(predicted), np.array(actual))
    assert r > 0.99
    # first order in delta: second-order terms stay within a few percent of the largest change
    np.testing.assert_allclose(predicted, actual, rtol=0.1, atol=0.05 * max(map(abs, actual)))
