"""The linear datamodeling score: its prediction, its sign, and LDS against real retraining."""

import numpy as np
import pytest
import torch

import infl
from infl.errors import InputError
from infl.validate import lds, random_subsets


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
