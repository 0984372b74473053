"""Influence against actual leave-one-out retraining: the sign and the 1/n scale."""

import copy
import warnings

import numpy as np
import pytest
import torch

import infl
from infl.objective import Objective
from infl.train import assign, minimize
from infl.validate import correlations, leave_one_out, newton_steps, removal_weights, retrain_without

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


def test_newton_steps_reach_the_weighted_optimum(logreg):
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    n = inf.n_train
    W = torch.full((2, n), 1.0 / n, dtype=torch.float64)
    W[1, 7] = 0
    Theta, ok = newton_steps(inf, W, inf.solver, tol=1e-11, max_iter=50)
    assert ok.all()
    torch.testing.assert_close(Theta[0], inf.objective_.theta, atol=1e-7, rtol=0)  # nothing removed: stays (fixture tol 1e-9)
    torch.testing.assert_close(Theta[1], retrain_without(inf, 7), atol=1e-8, rtol=0)
    Theta0, ok0 = newton_steps(inf, W, inf.solver, tol=0.0, max_iter=0, warn_diverged=False)  # no step taken
    assert not ok0.any() and torch.equal(Theta0[1], inf.objective_.theta)


def test_newton_steps_stop_and_warn_when_the_solver_lacks_the_proximal_term(logreg):
    """With proximal = lambda the steps need the curvature damped by lambda; the undamped one diverges, and the
    iterates used to grow without bound, silently. Those rows now stop with a warning naming the fix."""
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    n = inf.n_train
    W = torch.full((1, n), 1.0 / n, dtype=torch.float64)
    W[0, 3] = 0
    with pytest.warns(UserWarning, match="1 of 1 retrainings diverged.*fit it there, with damping = proximal = 30"):
        Theta, ok = newton_steps(inf, W, inf.solver, proximal=30.0, max_iter=50)
    assert not ok.any() and torch.isfinite(Theta).all()
    damped = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2, damping=30.0).fit(logreg.train)
    _, ok = newton_steps(inf, W, damped.solver, proximal=30.0, tol=1e-11)
    assert ok.all()


def test_damped_influence_tracks_proximal_retraining_of_an_unconverged_network():
    """Figure 2 (right) in small: a tanh MLP stopped short of a stationary point, damped
    influence against retraining from theta-tilde with and without each top point on
    R_w + (damping/2)||theta - theta-tilde||^2 (the retraining damped influence approximates)."""
    torch.manual_seed(0)
    X, y = make_blobs(200, 4, 3, seed=5)
    Xt, yt = make_blobs(1, 4, 3, seed=6)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    obj = Objective(model, cross_entropy, 1e-3)
    assign(model, obj, minimize(obj, X, y, tol=3e-4, max_iter=500))  # stopped early, as by a training budget
    inf = infl.Influence(model, cross_entropy, l2=1e-3, damping=0.01, stationarity_tol=float("inf")).fit((X, y))
    assert inf.grad_norm_ > 1e-4  # not a stationary point
    scores = inf.scores((Xt, yt))[0].numpy()
    top = np.argsort(-np.abs(scores))[:12]
    n = inf.n_train
    W = torch.full((len(top) + 1, n), 1.0 / n, dtype=torch.float64)
    W[torch.arange(1, len(top) + 1), torch.as_tensor(top)] = 0
    Theta, ok = newton_steps(inf, W, inf.solver, tol=1e-8, max_iter=300, proximal=0.01)
    assert ok.all()
    losses = torch.stack([inf.objective_.losses(t, Xt, yt)[0] for t in Theta]).detach().numpy()
    r, _ = correlations(-scores[top] / n, losses[1:] - losses[0])
    assert r > 0.85


def test_removal_weights_zero_one_point_per_row_after_an_optional_full_row():
    from infl.validate import removal_weights

    W = removal_weights(5, [3, 0], baseline=True)
    expected = torch.full((3, 5), 0.2, dtype=torch.float64)
    expected[1, 3] = expected[2, 0] = 0
    assert torch.equal(W, expected)
    assert torch.equal(removal_weights(5, [3, 0]), expected[1:])


def test_leave_one_out_reads_indices_as_up_params_does(logreg):
    """A boolean mask means the points it selects (it used to be read as indices 0 and 1, retrained over and
    over, with a perfect correlation); fractional, out-of-range, repeated or too few indices are refused before
    any retraining."""
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    mask = np.zeros(inf.n_train, dtype=bool)
    mask[[7, 21, 40, 55]] = True
    calls = []

    def counting(inf, indices):
        calls.append(list(indices))
        from infl.validate import retrain_all
        return retrain_all(inf, indices)

    res = leave_one_out(inf, logreg.test, mask, retrain=counting)
    assert res.indices.tolist() == [7, 21, 40, 55] and calls == [[7, 21, 40, 55]]
    assert leave_one_out(inf, logreg.test, [-1, 3, 4]).indices.tolist() == [inf.n_train - 1, 3, 4]
    for bad, message in [([1.7, 2.9, 3.0], "must be integers"), ([1, 2, 90], r"\[90\] are out of range"),
                         ([1, 2, 2, 3], r"points \[2\] more than once"), ([1, 2], "at least 3 different")]:
        with pytest.raises(infl.InputError, match=message):
            leave_one_out(inf, logreg.test, bad, retrain=counting)
    assert len(calls) == 1


def test_leave_one_out_refuses_a_retrain_result_it_cannot_read_by_name(logreg):
    """retrain's thetas used to fail at the end with AttributeError / KeyError / a dtype error; they are now checked
    (numpy and float32 thetas accepted and cast) and anything else refused naming the expected form."""
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    from infl.validate import retrain_all

    idx = [3, 4, 5]
    good = retrain_all(inf, idx)
    reference = leave_one_out(inf, logreg.test, idx, retrain=lambda inf, ix: good)
    as_numpy = leave_one_out(inf, logreg.test, idx, retrain=lambda inf, ix: {j: t.numpy() for j, t in good.items()})
    assert np.array_equal(as_numpy.actual, reference.actual)
    as_f32 = leave_one_out(inf, logreg.test, idx, retrain=lambda inf, ix: {j: t.float() for j, t in good.items()})
    assert np.allclose(as_f32.actual, reference.actual, atol=1e-5)
    p = inf.objective_.theta.numel()
    for returned, words in [(list(good.values()), "got a list"), ({3: good[3], 4: good[4]}, r"no entry for \[5\]"),
                            ({str(j): t for j, t in good.items()}, "no entry for"),
                            ({j: t[:-1] for j, t in good.items()}, f"{p} numbers.*shape \\({p - 1},\\)"),
                            ({j: t[None] for j, t in good.items()}, r"shape \(1, "),
                            ({j: {"weight": t} for j, t in good.items()}, "is a dict")]:
        with pytest.raises(infl.InputError, match=r"retrain must return \{j: theta\}.*" + words):
            leave_one_out(inf, logreg.test, idx, retrain=lambda inf, ix, r=returned: r)
    with pytest.warns(UserWarning, match="1 of 3 retrainings are NaN"):
        res = leave_one_out(inf, logreg.test, idx, retrain=lambda inf, ix: {**good, 4: good[4] * float("nan")})
    assert np.isnan(res.pearson).all()


def test_leave_one_out_warns_that_an_unconverged_model_adds_a_shared_move():
    torch.manual_seed(0)
    X, y = make_blobs(60, 4, 3, seed=5)
    model = torch.nn.Linear(4, 3).double()
    obj = Objective(model, cross_entropy, 1e-2)
    with pytest.warns(UserWarning, match="gradient max"):
        assign(model, obj, minimize(obj, X, y, tol=1e-2, max_iter=2))
    with pytest.warns(UserWarning, match="not at a stationary point"):
        inf = infl.Influence(model, cross_entropy, l2=1e-2).fit((X, y))
    with warnings.catch_warnings(record=True) as caught:  # the far optimum also costs L-BFGS its max_iter
        warnings.simplefilter("always")
        shifted = leave_one_out(inf, (X[:1], y[:1]), [0, 1, 2])
    assert any("theta_hat is not a minimum" in str(w.message) and "shared move" in str(w.message) for w in caught)

    def with_baseline(inf, indices):  # the same retraining on all points under None: the shared move's reference
        W = removal_weights(inf.n_train, indices, baseline=True)
        Theta = [minimize(obj, X, y, weights=w, theta0=obj.theta, tol=1e-9, max_iter=2000) for w in W]
        return {None: Theta[0], **{j: Theta[r + 1] for r, j in enumerate(indices)}}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning: the baseline takes the shared move out
        res = leave_one_out(inf, (X[:1], y[:1]), [0, 1, 2], retrain=with_baseline)
    thetas = with_baseline(inf, [0, 1, 2])
    losses = {j: float(inf.objective_.losses(thetas[j], X[:1], y[:1])) for j in (None, 0, 1, 2)}
    np.testing.assert_allclose(res.actual[0], [losses[j] - losses[None] for j in (0, 1, 2)], rtol=1e-12)
    drift = losses[None] - float(inf.objective_.losses(inf.objective_.theta, X[:1], y[:1]))
    assert abs(drift) > 10 * np.abs(res.actual).max()  # what `actual` held before: the drift dominated it
    np.testing.assert_allclose(shifted.actual - res.actual, drift, rtol=1e-6)


def test_newton_steps_warns_about_rows_that_ran_out_of_steps(logreg):
    """A row neither converged nor diverging after max_iter used to pass silently, flagged only in `converged`."""
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    W = removal_weights(inf.n_train, [3, 4], baseline=True)
    with pytest.warns(UserWarning, match="3 of 3 retrainings did not reach tol = 1e-30 within max_iter = 2"):
        _, ok = newton_steps(inf, W, inf.solver, tol=1e-30, max_iter=2)
    assert not ok.any()


def test_retraining_a_float32_model_asks_only_for_a_reachable_tolerance(logreg):
    """tol = 1e-10 cannot be met in float32: every row ran out of Newton steps and then 1,000 L-BFGS iterations,
    each warning 'raise max_iter'. retrain_all now asks for reachable_tol(float32) and stays quiet."""
    from infl.train import reachable_tol
    from infl.validate import retrain_all

    model = copy.deepcopy(logreg.model).float()
    inf = infl.Influence(model, logreg.loss_fn, l2=logreg.l2, stationarity_tol=1e-2).fit(logreg.train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        thetas = retrain_all(inf, [3, 4, 5])
    reference = retrain_all(infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train), [3, 4, 5])
    for j in (3, 4, 5):
        assert torch.allclose(thetas[j].double(), reference[j], atol=1e-4)
    assert reachable_tol(torch.float64) == 0 and 1e-7 < reachable_tol(torch.float32) < 1e-6


@pytest.mark.parametrize("data, l2", [("iris", 3.0), ("breast_cancer", 1e-3)])
def test_training_on_unscaled_features_reaches_the_tolerance_where_the_line_search_stalls(data, l2):
    """Raw features (iris' up to 7.9, breast cancer's up to 4,254): L-BFGS's line search stalled above tol (iris:
    gradient max 2e-8; the decrease left, g^2 / 2 lambda, is below the objective's rounding) and warned. Newton
    steps after it reach tol = 1e-9 without a warning, also where one step raises the gradient's largest entry
    on its way in (breast cancer)."""
    import sklearn.datasets

    from infl.train import fit_logistic

    X, y = getattr(sklearn.datasets, f"load_{data}")(return_X_y=True)
    classes = int(y.max()) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = fit_logistic(X, y, classes, l2)
    obj = Objective(model, cross_entropy, l2)
    theta = obj.theta.detach().clone().requires_grad_(True)
    risk = obj.losses(theta, torch.tensor(X), torch.tensor(y)).mean() + 0.5 * l2 * theta.square().sum()
    assert torch.autograd.grad(risk, theta)[0].abs().max() <= 1e-9


def test_a_stalled_line_search_is_told_apart_from_running_out_of_iterations():
    """Stopping after 1 of max_iter iterations read as the limit reached; a stall names its usual cause."""
    from infl.train import fit_logistic

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    X[:, 1] = X[:, 1] * 1e6 + 1e9  # one feature far larger than the others
    with pytest.warns(UserWarning, match=r"stopped after \d+ iterations?, its line search making no progress "
                                         r"\(max_iter=1000\).*standardise features"):
        fit_logistic(X, y, 2, 0.01)
    for scale, max_iter, told in ((1e6, 2000, r"\d+ iterations, its function evaluations \(a budget max_iter=2000 "
                                             r"sets\) spent on line searches.*standardise features.*or raise max_iter"),
                                  (1.0, 1, r"1 of max_iter=1 iterations.*not tight: raise max_iter$")):
        Z = rng.normal(size=(200, 5))
        Z[:, 0] *= scale
        model = torch.nn.Linear(5, 3).double()
        torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
        with pytest.warns(UserWarning, match=r"L-BFGS stopped after " + told):
            minimize(Objective(model, cross_entropy, 1e-4), torch.as_tensor(Z),
                     torch.as_tensor(rng.integers(0, 3, 200)), tol=1e-12, max_iter=max_iter)
