"""The exact hinge-SVM retrainer, and Figure 3 in small: smooth-hinge influence against hinge retraining."""

import warnings

import numpy as np
import pytest
import torch

import infl
from infl.errors import InputError
from infl.losses import make_smooth_hinge, smooth_hinge
from infl.objective import Objective
from infl.svm import fit_hinge_svm, kkt_violation, retrain_hinge_without
from infl.train import minimize
from infl.validate import correlations


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping Gaussian classes in 4-D, labels -1/+1 (overlap puts points inside the margin)."""
    rng = np.random.default_rng(seed)
    y = rng.choice([-1.0, 1.0], n)
    return rng.normal(size=(n, 4)) + 0.8 * y[:, None], y


def with_bias(X):
    return np.hstack([X, np.ones((len(X), 1))])


def hinge_risk(theta, X, y, c, l2):
    return float(c @ np.maximum(0, 1 - y * (X @ theta)) + 0.5 * l2 * theta @ theta)


def linear(theta):
    model = torch.nn.Linear(theta.size - 1, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor(theta[:-1])[None])
        model.bias.copy_(torch.tensor(theta[-1:]))
    return model


def test_hinge_fit_is_the_minimiser():
    """KKT-certified, and no worse than the smooth-hinge optimum at tiny t found independently by L-BFGS."""
    X, y = blobs(120, 0)
    Xb, l2, n = with_bias(X), 0.1, 120
    fit = fit_hinge_svm(Xb, y, l2)
    a = fit.dual
    assert fit.kkt < 1e-10 and ((a > 0) & (a < 1 / n)).any() and (a >= 1 / n).any()  # all three sets occur
    model = torch.nn.Linear(4, 1).double()
    obj = Objective(model, make_smooth_hinge(1e-3), l2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        smooth = minimize(obj, torch.tensor(X), torch.tensor(y), theta0=torch.zeros(5, dtype=torch.float64),
                          tol=1e-9, max_iter=300).numpy()
    c = np.full(n, 1 / n)
    assert np.abs(smooth - fit.theta).max() < 1e-2  # the smooth optimum tends to the hinge one as t -> 0
    assert hinge_risk(fit.theta, Xb, y, c, l2) <= hinge_risk(smooth, Xb, y, c, l2) + 1e-12
    # any nearby point is no better (the objective is convex, so this holds globally)
    rng = np.random.default_rng(1)
    for _ in range(20):
        probe = fit.theta + 1e-3 * rng.normal(size=fit.theta.size)
        assert hinge_risk(fit.theta, Xb, y, c, l2) <= hinge_risk(probe, Xb, y, c, l2)


def test_leave_one_out_removes_exactly_one_point():
    X, y = blobs(80, 2)
    Xb, l2 = with_bias(X), 0.1
    full = fit_hinge_svm(Xb, y, l2)
    theta = retrain_hinge_without(Xb, y, l2, full, [int(np.argmax(full.dual))])
    j, t = next(iter(theta.items()))
    keep = np.arange(80) != j
    direct = fit_hinge_svm(Xb[keep], y[keep], l2, weights=np.full(79, 1 / 80))
    np.testing.assert_allclose(t, direct.theta, atol=1e-10)


def test_smooth_hinge_influence_predicts_hinge_retraining():
    """Figure 3 in small: t = 0.001 influence at the hinge optimum against exact hinge leave-one-out."""
    X, y = blobs(300, 3)
    Xt, yt = blobs(40, 4)
    Xb, l2, n = with_bias(X), 0.1, 300
    full = fit_hinge_svm(Xb, y, l2)
    margin = yt * (with_bias(Xt) @ full.theta)
    k = int(np.argmin(margin))  # misclassified: its hinge loss is 1 - margin, linear in theta
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # theta_hat is the hinge optimum, not the smooth one
        inf = infl.Influence(linear(full.theta), make_smooth_hinge(1e-3), l2=l2).fit((torch.tensor(X), torch.tensor(y)))
    scores = inf.scores((torch.tensor(Xt[k:k + 1]), torch.tensor(yt[k:k + 1])))[0].numpy()
    top = np.argsort(-np.abs(scores))[:30]
    thetas = retrain_hinge_without(Xb, y, l2, full, top)
    xt = with_bias(Xt)[k]
    actual = np.array([(1 - yt[k] * xt @ thetas[int(j)]) - (1 - margin[k]) for j in top])
    predicted = -scores[top] / n
    r, _ = correlations(predicted, actual)
    assert r > 0.9
    assert 0.8 < np.polyfit(predicted, actual, 1)[0] < 1.25  # the sign and the 1/n scale


def test_hinge_fit_rejects_bad_input():
    X, y = blobs(10, 0)
    with pytest.raises(InputError, match="-1 or \\+1"):
        fit_hinge_svm(X, (y > 0).astype(float), 0.1)
    with pytest.raises(InputError, match="l2 > 0"):
        fit_hinge_svm(X, y, 0.0)
    assert kkt_violation(X, y, np.full(10, 0.1), 0.1, np.zeros(10)) > 0  # a = 0 is not optimal here


@pytest.mark.parametrize("loss_fn", [make_smooth_hinge(0.1), smooth_hinge])
def test_smooth_hinge_refuses_zero_one_labels(loss_fn):
    """A 0 label gives a constant loss t log(1 + e^(1/t)) with zero gradient: the point would silently drop out."""
    X, y = blobs(10, 0)
    model = torch.nn.Linear(4, 1).double()
    train = (torch.tensor(X), torch.tensor(y))
    zero_one = (train[0], (train[1] > 0).double())
    with pytest.raises(InputError, match="labels -1 and \\+1.*2 \\* y - 1"):
        infl.Influence(model, loss_fn, l2=0.1).fit(zero_one)
    inf = infl.Influence(model, loss_fn, l2=0.1, stationarity_tol=float("inf")).fit(train)
    with pytest.raises(InputError, match="labels -1 and \\+1"):
        inf.scores((train[0][:3], torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)))
