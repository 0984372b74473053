"""The RBF SVM of `infl behaviour`: its kernel map, its optimum, and its influence against leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infl import Influence, InputError
from infl.behaviour import compare_behaviour
from infl.data import load_builtin
from infl.frozen import binary_task
from infl.losses import make_smooth_hinge
from infl.rbf import RBFFeatures, rbf_svm, squared_distances, to_pm
from infl.validate import leave_one_out


@pytest.fixture(scope="module")
def svm_task():
    split = load_builtin("digits")
    task = binary_task(split, (3, 8))
    X = torch.as_tensor(task.X_train[:200])
    y = torch.as_tensor(task.y_train[:200])
    return X, y, torch.as_tensor(task.X_test[:3]), torch.as_tensor(task.y_test[:3])


def test_kernel_map_reproduces_the_kernel():
    X = torch.as_tensor(np.random.default_rng(0).random((30, 6)))
    phi = RBFFeatures(X, gamma=0.7)
    K = torch.exp(-0.7 * squared_distances(X, X))
    torch.testing.assert_close(phi(X) @ phi(X).T, K, atol=1e-8, rtol=0)


def test_svm_is_at_its_optimum_and_classifies(svm_task):
    X, y, _, _ = svm_task
    svm = rbf_svm(X, y, l2=1e-3, t=0.1)
    inf = Influence(svm, make_smooth_hinge(0.1), l2=1e-3).fit((X, to_pm(y)))
    assert inf.grad_norm_ < 1e-8
    with torch.no_grad():
        assert ((svm(X)[:, 0] > 0).long() == y).float().mean() > 0.95


def test_svm_influence_matches_leave_one_out(svm_task):
    X, y, Xt, yt = svm_task
    svm = rbf_svm(X, y, l2=1e-2, t=0.1)
    inf = Influence(svm, make_smooth_hinge(0.1), l2=1e-2).fit((X, to_pm(y)))
    scores = inf.scores((Xt[:1], to_pm(yt[:1])))[0]
    idx = torch.argsort(scores.abs(), descending=True)[:15].tolist()
    res = leave_one_out(inf, (Xt[:1], to_pm(yt[:1])), idx)
    assert res.pearson[0] > 0.95 and res.spearman[0] > 0.95  # 0.981 and 0.982 when written


def test_bad_inputs(svm_task):
    X, y, _, _ = svm_task
    with pytest.raises(InputError, match="single class"):
        rbf_svm(X, torch.zeros_like(y))
    with pytest.raises(InputError, match="gamma must be a finite number > 0"):
        RBFFeatures(X, gamma=float("nan"))
    with pytest.raises(InputError, match="labelled 0/1 or -1/\\+1"):
        to_pm(torch.tensor([0, 2]))
    task = binary_task(load_builtin("digits"), (3, 8))
    with pytest.raises(InputError, match="out of range"):
        compare_behaviour(task, torch.nn.Identity(), len(task.y_test))


def test_many_test_points_at_once_match_one_at_a_time():
    """compare_behaviours fits each model once and scores all test points; each Behaviour equals compare_behaviour's."""
    from infl.behaviour import compare_behaviours
    from infl.frozen import DigitCNN, freeze

    task = binary_task(load_builtin("digits"), (3, 8))
    torch.manual_seed(0)
    net = freeze(DigitCNN(task.image_shape))
    many = compare_behaviours(task, net, [0, 3, 5])
    for res in many:
        one = compare_behaviour(task, net, res.test_index)
        assert res.label == one.label
        np.testing.assert_allclose(res.distances, one.distances)
        for a, b in zip(res.views, one.views):
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-9, atol=1e-12)
            assert (a.name, a.predicted) == (b.name, b.predicted) and a.loss == pytest.approx(b.loss)
    assert not np.allclose(many[0].views[0].scores, many[1].views[0].scores)


def test_a_test_point_whose_gradient_underflows_is_named_and_lists_no_helpful_points():
    """A tiny svm_l2 makes the SVM so sure of test point 0 that its smooth-hinge gradient is exactly 0: every
    score is 0. A warning says so, and no training point is listed as helpful (it listed indices 0..k-1)."""
    from infl.frozen import DigitCNN, freeze

    task = binary_task(load_builtin("digits"), (4, 9))
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"RBF SVM: every training point's influence is exactly 0.*larger svm_l2 "
                                         r"\(--svm-l2\)"):
        res = compare_behaviour(task, freeze(DigitCNN(task.image_shape)), 0, svm_l2=1e-12)
    svm = res.views[0]
    assert not svm.scores.any() and svm.helpful(8).size == 0
    assert np.isnan(res.summary(10)[svm.name]["mean distance of top 10 helpful"])
