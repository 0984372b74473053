"""Training-set attacks: I_pert,loss shortcut, projection, and the attack raising the retrained test loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from infl import Influence, InputError
from infl.attack import EIGHT_BIT, Budget, HeadAttack, flip_fractions, project
from infl.data import load_builtin
from infl.frozen import binary_task, cross_entropy, features, fit_head, train_extractor
from infl.grads import sum_grad
from infl.objective import Objective


@pytest.fixture(scope="module")
def small():
    """Digits 4 vs 9 (8x8) on a CNN trained briefly on 400 images of the other classes; 120 training points."""
    split = load_builtin("digits")
    other = ~np.isin(split.y_train, (4, 9))
    net = train_extractor(split.X_train[other][:400], split.y_train[other][:400], (8, 8), epochs=3)
    task = binary_task(split, (4, 9))
    rng = np.random.default_rng(0)
    rows = rng.choice(len(task.y_train), 120, replace=False)
    X, y = task.X_train[rows], task.y_train[rows]
    return HeadAttack(net, X, y, l2=0.01), task


def hardest_correct(att: HeadAttack, task, count: int) -> list[int]:
    """The `count` correctly classified test points with the smallest margin."""
    with torch.no_grad():
        p = torch.softmax(att.model()(torch.as_tensor(task.X_test)), 1)[np.arange(len(task.y_test)), task.y_test]
    ok = np.flatnonzero(p.numpy() > 0.5)
    return ok[np.argsort(p.numpy()[ok])][:count].tolist()


def test_fit_head_reaches_the_optimum(small):
    att, _ = small
    obj = Objective(att.model(), cross_entropy, 0.01)  # grad R through the whole network
    assert (sum_grad(obj, att.X, att.y, 64) / len(att.y) + obj.l2 * obj.theta).abs().max() < 1e-8
    warm = fit_head(att.A, att.y, 0.01, theta0=att.theta + 0.3)
    torch.testing.assert_close(warm, att.theta, atol=1e-8, rtol=0)


def test_i_pert_loss_equals_the_full_model_pert_loss(small):
    att, task = small
    x, y = torch.as_tensor(task.X_test[:1]), torch.as_tensor(task.y_test[:1])
    index = torch.tensor([3, 40, 77])
    ours = att.i_pert_loss(att.A, att.X, att.theta, x, y, index)
    ref = Influence(att.model(), cross_entropy, l2=0.01).fit((att.X, att.y)).pert_loss((x, y), index)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-12)


def test_one_step_changes_the_retrained_loss_as_predicted(small):
    """(1/n) I_pert,loss . delta predicts the actual change of the retrained test loss (small step)."""
    att, task = small
    t = hardest_correct(att, task, 1)[0]
    x, y = torch.as_tensor(task.X_test[[t]]), torch.as_tensor(task.y_test[[t]])
    order = att.rank(task.X_test[t], int(task.y_test[t]))
    res = att.attack(task.X_test[t], int(task.y_test[t]), order[:2], Budget(radius=1e-3, step=1e-3, steps=1))
    delta = torch.as_tensor(res.X_perturbed - res.X_original)
    pert = att.i_pert_loss(att.A, att.X, att.theta, x, y, torch.as_tensor(order[:2]))
    predicted = float((pert * delta).sum()) / att.n
    actual = res.losses[1] - res.losses[0]
    assert predicted > 0 and actual == pytest.approx(predicted, rel=0.15)


def test_attack_raises_the_test_loss_more_than_random_signs(small):
    att, task = small
    radius = 8 / 255
    for t in hardest_correct(att, task, 2):
        x, y = task.X_test[t], int(task.y_test[t])
        order = att.rank(x, y)[:2]
        res = att.attack(x, y, order, Budget(radius=radius, steps=5), stop_on_flip=False)
        # the same budget spent on random signs, retrained exactly
        X, A = att.X.clone(), att.A.clone()
        signs = torch.as_tensor(np.random.default_rng(t).choice([-1.0, 1.0], size=(2, X.shape[1])))
        X[order] = project(X[order] + radius * signs, *Budget(radius=radius).bounds(att.X[order]))
        A[order] = features(att.extractor, X[order])
        random_loss = att.test_loss(fit_head(A, att.y, att.l2, att.theta), *att._test(x, y))[0]
        assert res.losses[-1] > res.losses[0] + 1e-3  # the unperturbed retrain is theta_hat itself (losses[0])
        assert res.losses[-1] - res.losses[0] > 5 * abs(random_loss - res.losses[0])


def test_default_budget_keeps_the_8bit_image(small):
    att, task = small
    X_before = att.X.clone()
    res = att.attack(task.X_test[0], int(task.y_test[0]), [5, 6], Budget(steps=5), stop_on_flip=False)
    moved = res.X_perturbed - res.X_original
    assert np.abs(moved).max() > 0.4 / 255  # it used the budget
    assert np.abs(moved).max() < 1 / 255
    # digits are multiples of 1/16, off the 8-bit grid: each pixel keeps the grey level it rounds to
    np.testing.assert_array_equal(np.round(res.X_perturbed * 255), np.round(res.X_original * 255))
    assert ((res.X_perturbed >= 0) & (res.X_perturbed <= 1)).all()
    torch.testing.assert_close(att.X, X_before)  # the attacker's clean data is untouched


def test_projection_onto_a_user_budget():
    X0 = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    out = project(torch.tensor([[-0.3, 0.9, 0.2]], dtype=torch.float64), *Budget(radius=0.1).bounds(X0))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.6, 0.9]], dtype=torch.float64))
    assert Budget(radius=np.float32(0.25), steps=np.int64(3)) == Budget(radius=0.25, steps=3)


def test_the_eight_bit_budget_keeps_every_grey_level_on_and_off_the_8_bit_grid():
    """Pixels stored in 8 bits get x0 +- 0.499/255; others (digits: multiples of 1/16) the interval that rounds to
    their own grey level, so round(255 x) never changes, however far the steps push."""
    budget = Budget()
    on_grid = torch.arange(256, dtype=torch.float64)[None] / 255
    lo, hi = budget.bounds(on_grid)
    torch.testing.assert_close(hi[0, 1:-1] - on_grid[0, 1:-1], torch.full((254,), EIGHT_BIT, dtype=torch.float64))
    sixteenths = torch.arange(17, dtype=torch.float64)[None] / 16
    for X0 in (on_grid, sixteenths):
        lo, hi = budget.bounds(X0)
        assert ((lo <= X0) & (X0 <= hi)).all()
        for push in (-1.0, 1.0):
            moved = project(X0 + push * 10 / 255, lo, hi)
            assert torch.equal(torch.round(255 * moved), torch.round(255 * X0))
            stored = moved.float()  # the attacked images saved in float32 keep their grey levels too
            assert torch.equal(torch.round(255 * stored), torch.round(255 * X0.float()))
    moved = project(sixteenths - 1, *budget.bounds(sixteenths))
    assert (sixteenths - moved).max() > 0.5 / 255  # 15.9375 / 255 may go down to 15.501 / 255 and still read 16


@pytest.mark.parametrize("kwargs, words", [
    ({"radius": -0.01}, "radius must be a finite number > 0"),
    ({"radius": float("nan")}, "radius must be a finite number > 0"),
    ({"radius": float("inf")}, "radius must be a finite number > 0"),
    ({"step": -1.0}, "step must be a finite number > 0"),
    ({"step": float("inf")}, "step must be a finite number > 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
])
def test_bad_budgets(kwargs, words):
    with pytest.raises(InputError, match=words):
        Budget(**kwargs)


def test_bad_python_api_input_is_refused_by_name(small):
    att, task = small
    x, y = task.X_test[0], int(task.y_test[0])
    bad = [(lambda: att.attack(x, 5, [0]), "test label must be a class index in 0..1, got 5"),
           (lambda: att.attack(x * 255, y, [0]), r"test image must have pixels in \[0, 1\]"),
           (lambda: att.attack(x[:10], y, [0]), "the test image has 10 pixels"),
           (lambda: att.attack(x, y, [1.7]), "training indices must be integers"),
           (lambda: att.attack(x, y, [-1]), r"training indices must be in 0..119 \(120 rows\), got \[-1\]"),
           (lambda: att.attack(x, y, []), "no training indices given"),
           (lambda: flip_fractions(att, task.X_test, task.y_test, [len(task.y_test)], (1,)), "test indices must be in"),
           (lambda: flip_fractions(att, task.X_test, task.y_test, [0], (-1,)), "counts must be .* from 1 to 120"),
           (lambda: att.attack(x, _wrong_label(att, x, y), [0]),
            "already misclassified .* attack a correctly classified"),
           (lambda: HeadAttack(att.extractor, task.X_train, task.y_train + 0.5), "one class index .* float64 labels"),
           (lambda: HeadAttack(att.extractor, task.X_train, task.y_train[1:]), "labels for"),
           (lambda: HeadAttack(att.extractor, np.where(np.arange(task.X_train.size).reshape(task.X_train.shape) == 0,
                                                       np.nan, task.X_train), task.y_train), "1 NaN or infinite pixels"),
           (lambda: HeadAttack(torch.nn.Linear(task.X_train.shape[1], 3).double(), task.X_train, task.y_train),
            r"\(n, 64\) features")]
    for call, words in bad:
        with pytest.raises(InputError, match=words):
            call()
    for label in (torch.tensor(y), np.array(y), np.int64(y)):  # a 0-d tensor or array is a label too
        assert (att.rank(x, label) == att.rank(x, y)).all()


def _wrong_label(att: HeadAttack, x, y: int) -> int:
    """The label the model does not predict for x: attacking with it starts misclassified (counted as a flip)."""
    with torch.no_grad():
        predicted = int(att.model()(torch.as_tensor(x)[None]).argmax(1)[0])
    return 1 - predicted


def test_single_class_and_bad_pixels_are_refused():
    from torch import nn

    net = nn.Flatten()
    X = np.random.default_rng(0).random((10, 4))
    with pytest.raises(InputError, match="single class"):
        HeadAttack(net, X, np.zeros(10, dtype=np.int64))
    with pytest.raises(InputError, match=r"pixels in \[0, 1\]"):
        HeadAttack(net, X * 255, np.arange(10) % 2)
    split = load_builtin("digits")
    with pytest.raises(InputError, match="two different digit classes"):
        binary_task(split, (3, 3))
    assert EIGHT_BIT < 0.5 / 255
