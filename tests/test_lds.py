"""The linear datamodeling score: its prediction, its sign, and LDS against real retraining."""

import numpy as np
import pytest
import torch

import infl
from infl.errors import InputError
from infl.objective import Objective
from infl.train import assign, minimize
from infl.validate import lds, lds_of_predictions, random_subsets


def test_prediction_is_the_scaled_sum_over_each_subset():
    """A retrain whose loss is exactly constant + (1/n) sum_{i in S} I scores 1; the opposite sign scores -1."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 50))
    calls = []

    def additive(index):
        calls.append(index)
        return 2.0 + scores[:, index].sum(1) / 50

    res = lds(scores, additive, subsets=12, fraction=0.3, seed=1)
    assert all(len(i) == 15 for i in calls) and res.subsets.sum(1).tolist() == [15] * 12
    np.testing.assert_allclose(res.predicted, res.actual - 2.0, atol=1e-12)
    np.testing.assert_allclose(res.spearman, 1.0)
    flipped = lds(scores, lambda index: -additive(index), subsets=12, fraction=0.3, seed=1)
    np.testing.assert_allclose(flipped.spearman, -1.0)


def test_float32_predictions_do_not_round_the_retrained_losses():
    """The retrained losses were stored in the predictions' dtype: float32 rounded 2 + 1e-7 x (prediction) to a few
    values, and their ranks tied. They are kept in float64."""
    scores = np.random.default_rng(0).normal(size=(3, 40))
    masks = random_subsets(40, 30, 0.5, seed=0)
    P = torch.tensor(scores @ masks.T / 40, dtype=torch.float32)
    res = lds_of_predictions(P, masks, lambda index: 2 + 1e-7 * scores[:, index].sum(1) / 40)
    assert res.actual.dtype == np.float64
    np.testing.assert_allclose(res.spearman, 1.0)


def test_an_interrupted_lds_resumes_from_its_checkpoint(tmp_path):
    """A retrain that fails at the 5th subset leaves 4 in the checkpoint; the rerun retrains only the other 8 and
    gives the uninterrupted answer. Another draw, or a file that is not a checkpoint, is refused and left alone."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 50))
    calls, interrupt_at = [], [4]

    def retrain(index):
        if len(calls) == interrupt_at[0]:
            raise KeyboardInterrupt
        calls.append(tuple(index))
        return 2.0 + scores[:, index].sum(1) / 50 + 0.01 * rng.normal(size=3)

    path = tmp_path / "lds.npz"
    with pytest.raises(KeyboardInterrupt):
        lds(scores, retrain, subsets=12, fraction=0.3, seed=1, checkpoint=path)
    assert len(calls) == 4 and path.exists()
    interrupt_at[0] = None
    counts = []
    res = lds(scores, retrain, subsets=12, fraction=0.3, seed=1, checkpoint=path, done=counts.append)
    assert len(calls) == 12 and len(set(calls)) == 12 and counts == [4] + [1] * 8
    masks = random_subsets(50, 12, 0.3, seed=1)
    assert [tuple(np.flatnonzero(m)) for m in masks] == calls
    again = lds(scores, lambda index: pytest.fail("all subsets are in the checkpoint"), subsets=12, fraction=0.3,
                seed=1, checkpoint=path)
    np.testing.assert_array_equal(again.actual, res.actual)
    with pytest.raises(InputError, match="written for other subsets.*the same sizes, other subsets.*same subsets, "
                                         "fraction and seed to resume"):
        lds(scores, retrain, subsets=12, fraction=0.3, seed=2, checkpoint=path)
    with pytest.raises(InputError, match=r"subsets of 50 points, 3 test points; now 12 of 51, 3\): pass a new"):
        lds(np.hstack([scores, scores[:, :1]]), retrain, subsets=12, fraction=0.3, seed=1, checkpoint=path)
    old = tmp_path / "old.npz"
    np.savez(old, format=np.array("infl-lds-checkpoint-1"), masks=masks, actual=res.actual, finished=np.ones(12, bool))
    with pytest.raises(InputError, match="not an LDS checkpoint of this version.*format 'infl-lds-checkpoint-1'"):
        lds(scores, retrain, subsets=12, fraction=0.3, seed=1, checkpoint=old)
    np.save(tmp_path / "one.npy", np.ones(3))
    with pytest.raises(InputError, match="not an LDS checkpoint.*one array"):
        lds(scores, retrain, subsets=12, fraction=0.3, seed=1, checkpoint=tmp_path / "one.npy")
    other = tmp_path / "mine.npz"
    np.savez(other, X=np.ones(3))
    before = other.read_bytes()
    with pytest.raises(InputError, match="not an LDS checkpoint.*left as it is"):
        lds(scores, retrain, subsets=12, fraction=0.3, seed=1, checkpoint=other)
    assert other.read_bytes() == before
    with pytest.raises(InputError, match="folder .* does not exist"):
        lds(scores, retrain, subsets=12, fraction=0.3, seed=1, checkpoint=tmp_path / "nope" / "lds.npz")


def squared(out, y):
    return 0.5 * (out.squeeze(-1) - y) ** 2


def test_lds_of_exact_influence_against_ridge_retraining():
    """Retrain ridge regression in closed form on 40 random halves: the influence ranks the test losses."""
    gen = torch.Generator().manual_seed(0)
    X, Xt = torch.randn(120, 5, generator=gen, dtype=torch.float64), torch.randn(6, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, generator=gen, dtype=torch.float64)
    y, yt = X @ w + torch.randn(120, generator=gen, dtype=torch.float64), Xt @ w + torch.randn(6, generator=gen, dtype=torch.float64)
    l2 = 0.1

    def ridge(index):  # argmin (1/|S|) sum_S L + (l2/2)||theta||^2
        Xs, ys = X[index], y[index]
        return torch.linalg.solve(Xs.T @ Xs / len(index) + l2 * torch.eye(5, dtype=torch.float64), Xs.T @ ys / len(index))

    model = torch.nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(ridge(np.arange(120))[None])
    scores = infl.Influence(model, squared, l2=l2).fit((X, y)).scores((Xt, yt))
    retrain = lambda index: 0.5 * (Xt @ ridge(index) - yt) ** 2  # noqa: E731
    res = lds(scores, retrain, subsets=40, seed=0)
    assert res.actual.shape == (6, 40)
    assert res.mean > 0.8
    # one solve per subset instead of one per test point: -(1/n) grad L(z_test)^T H^{-1} sum_{i in S} grad L(z_i)
    inf = infl.Influence(model, squared, l2=l2).fit((X, y))
    masks = random_subsets(120, 40, 0.5, 0)
    G = inf.objective_.per_example_grads(X, y)
    U = inf.solver.solve(torch.as_tensor(masks, dtype=torch.float64) @ G)[0]
    by_subset = lds_of_predictions(-(inf.test_grads((Xt, yt)) @ U.T) / 120, masks, retrain)
    np.testing.assert_allclose(by_subset.predicted, res.predicted, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(by_subset.spearman, res.spearman)
    # the same scores attributed to the wrong training points carry no information
    shuffled = lds(scores[:, torch.randperm(120, generator=gen)], retrain, subsets=40, seed=0)
    assert shuffled.mean < res.mean - 0.4


def test_lds_rejects_bad_input():
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        random_subsets(10, 5, 1.0, 0)
    with pytest.raises(InputError, match=">= 3"):
        random_subsets(10, 2, 0.5, 0)
    with pytest.raises(InputError, match=r"\(m test points, n training points\)"):
        lds(np.zeros(10), lambda index: np.zeros(1))
    with pytest.raises(InputError, match=r"shape \(2,\)"):
        lds(np.zeros((2, 10)), lambda index: np.zeros(3), subsets=3)
    with pytest.raises(InputError, match=r"\(m test points, 3 subsets\)"):
        lds_of_predictions(np.zeros((2, 4)), random_subsets(10, 3, 0.5, 0), lambda index: np.zeros(2))
    # masks lds_of_predictions used to take: 2 subsets (an LDS of 1.0), an empty subset, fractional or 1-D masks
    good = random_subsets(10, 3, 0.5, 0)
    for masks, words in [(good[:2], "at least 3"), (np.vstack([good, np.zeros(10, bool)]), r"subsets \[3\] keep none"),
                         (good * 0.5, "bool array"), (good[0], "bool array"), (list(good), None),
                         (good.astype(np.uint8), None), (good.astype(float), None)]:
        call = lambda m=masks: lds_of_predictions(np.zeros((1, len(m))), m, lambda index: np.zeros(1))  # noqa: E731
        if words is None:  # a list of bool rows, or 0/1 numbers, say the same as the bool masks
            assert np.array_equal(call().subsets, good)
            continue
        with pytest.raises(InputError, match=words):
            call()
    for seed in (-1, 1.5, None):
        with pytest.raises(InputError, match="seed must be an integer >= 0"):
            random_subsets(10, 3, 0.5, seed)
    for returned in (np.zeros(2, dtype=complex), np.zeros(2, dtype=bool)):
        with pytest.raises(InputError, match="real numbers.*dtype"):
            lds(np.zeros((2, 10)), lambda index, r=returned: r, subsets=3)


def test_lds_of_a_small_tanh_network_retrained_from_one_initialisation():
    """A non-convex model, retrained deterministically (same initialisation, L-BFGS to the same tolerance) on
    each half: Gauss-Newton influence at theta_hat ranks the retrained test losses; shuffled scores do not."""
    gen = torch.Generator().manual_seed(0)
    X, Xt = torch.randn(60, 3, generator=gen, dtype=torch.float64), torch.randn(6, 3, generator=gen, dtype=torch.float64)
    label = lambda Z: (Z[:, 0] * Z[:, 1] + 0.5 * Z[:, 2] + 0.7 * torch.randn(len(Z), generator=gen, dtype=torch.float64) > 0).long()  # noqa: E731
    y, yt = label(X), label(Xt)
    ce = lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none")  # noqa: E731
    l2, cache = 1e-2, {}

    def train(index):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).double()
        obj = Objective(model, ce, l2)
        return model, obj, minimize(obj, X[index], y[index], tol=1e-7, max_iter=2000)

    def retrain(index):  # memoised: both calls below draw the same subsets
        key = index.tobytes()
        if key not in cache:
            cache[key] = obj.losses(train(index)[2], Xt, yt).detach()
        return cache[key]

    model, obj, theta = train(np.arange(60))
    assign(model, obj, theta)
    scores = infl.Influence(model, ce, l2=l2, curvature="gauss-newton").fit((X, y)).scores((Xt, yt))
    res = lds(scores, retrain, subsets=12, seed=0)
    shuffled = lds(scores[:, torch.randperm(60, generator=gen)], retrain, subsets=12, seed=0)
    assert len(cache) == 12
    assert res.mean > 0.4 and shuffled.mean < res.mean - 0.3, (res.mean, shuffled.mean)


def test_lds_says_when_a_test_point_has_no_score():
    """A retrain that returns NaN for one test point leaves that point's LDS undefined: it is nan, the mean
    is over the others, and a warning says so (the mean used to drop it silently). Non-finite scores and a
    NumPy integer count of subsets are handled before any retraining."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 30))

    def retrain(index):
        out = 1.0 + scores[:, index].sum(1) / 30
        out[3] = np.nan
        return out

    with pytest.warns(UserWarning, match="LDS of 1 of 4 test points is undefined.*averages the other 3"):
        res = lds(scores, retrain, subsets=np.int64(6))
    assert np.isnan(res.spearman[3]) and res.mean == pytest.approx(1.0)
    bad = scores.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="the scores hold 1 NaN or inf"):
        lds(bad, lambda index: pytest.fail("retrained despite NaN scores"), subsets=3)
