"""Label triage (paper section 5.4): flips, rankings against dense references, counts, fixing, CLI."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infl import Influence, InputError
from infl.cli import main
from infl.data import Split, load_builtin
from infl.losses import cross_entropy
from infl.testing import dense_hessian
from infl.train import fit_logistic
from infl.triage import (check_claim, check_fraction, fixed_labels, flip_labels, found_fraction, rank_for_checking,
                         triage, without_empty_features)


def small_digits(n_train: int = 240, n_test: int = 120) -> Split:
    """The first training and test rows of the built-in digits (8x8, 10 classes)."""
    s = load_builtin("digits")
    return Split(s.X_train[:n_train], s.y_train[:n_train], s.X_test[:n_test], s.y_test[:n_test], s.image_shape,
                 s.classes, "digits-small")


def test_flip_labels_flips_exactly_the_drawn_points_to_other_classes():
    y = np.arange(200) % 4
    before = y.copy()
    noisy, flipped = flip_labels(y, 0.1, 4, seed=3)
    assert len(flipped) == 20 and len(set(flipped.tolist())) == 20
    assert (noisy[flipped] != y[flipped]).all()
    rest = np.setdiff1d(np.arange(200), flipped)
    assert (noisy[rest] == y[rest]).all() and (y == before).all()
    again, same = flip_labels(y, 0.1, 4, seed=3)
    assert (again == noisy).all() and (same == flipped).all()
    assert not np.array_equal(flip_labels(y, 0.1, 4, seed=4)[1], flipped)


def test_flipped_class_is_uniform_over_the_other_classes():
    y = np.zeros(20000, dtype=np.int64)
    y[::2] = 1  # two labels present; flips of class-0 points land on 1, 2, 3 equally often
    noisy, flipped = flip_labels(y, 0.5, 4, seed=0)
    counts = np.bincount(noisy[flipped][y[flipped] == 0], minlength=4)
    assert counts[0] == 0 and np.all(np.abs(counts[1:] / counts[1:].sum() - 1 / 3) < 0.03)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, float("nan"), float("inf"), True, "0.1"])
def test_flip_fraction_outside_open_interval_is_refused(fraction):
    with pytest.raises(InputError, match=r"flip fraction must be a number strictly between 0 and 1 \(e.g. 0.1"):
        check_fraction(fraction)


def test_flip_fraction_may_be_a_numpy_number():
    assert check_fraction(np.float32(0.25)) == 0.25 and check_fraction(np.float64(0.1)) == 0.1


def test_single_class_cannot_be_flipped():
    with pytest.raises(InputError, match=r"needs at least 2 classes, got \[2\]"):
        flip_labels(np.full(10, 2), 0.2, 3, seed=0)


def test_found_fraction_counts_flips_among_the_first_checked():
    order = np.array([5, 1, 7, 0, 2, 3, 4, 6, 8, 9])
    flipped = np.array([7, 9])
    got = found_fraction(order, flipped, [0.0, 0.2, 0.3, 0.9, 1.0])
    assert got.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]


def test_fixed_labels_restore_only_checked_points():
    clean, noisy = np.array([0, 1, 2, 0]), np.array([1, 1, 0, 0])
    assert fixed_labels(noisy, clean, np.array([2, 0, 1, 3]), 0.25).tolist() == [1, 1, 2, 0]
    assert fixed_labels(noisy, clean, np.array([2, 0, 1, 3]), 1.0).tolist() == clean.tolist()


def test_rank_for_checking_matches_dense_self_influence_and_loss(logreg):
    inf = Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    ranking = rank_for_checking(inf, seed=0)
    H = dense_hessian(logreg.model, logreg.loss_fn, logreg.X, logreg.y, logreg.l2)
    G = inf.objective_.per_example_grads(logreg.X, logreg.y)
    expected = -(G * torch.linalg.solve(H, G.T).T).sum(1).numpy()
    np.testing.assert_allclose(ranking.self_influence, expected, rtol=1e-8, atol=1e-12)
    assert (ranking.self_influence <= 0).all()  # PD Hessian: never positive (MATH.md)
    with torch.no_grad():
        loss = logreg.loss_fn(logreg.model(logreg.X), logreg.y).numpy()
    np.testing.assert_allclose(ranking.loss, loss, rtol=1e-10)
    assert (np.diff(np.abs(expected)[ranking.orders["self-influence"]]) <= 0).all()
    assert (np.diff(loss[ranking.orders["training loss"]]) <= 0).all()
    assert sorted(ranking.orders["random"].tolist()) == list(range(len(loss)))


@pytest.fixture(scope="module")
def small_runs():
    return triage(small_digits(), flip=0.1, seeds=(0, 1), fixed=(0.2, 1.0))


def test_triage_finds_flips_far_faster_than_random_and_fixing_all_recovers_clean_accuracy(small_runs):
    for run in small_runs:
        at = lambda f: int(np.argmin(np.abs(run.checked - f)))  # noqa: E731
        for method in ("self-influence", "training loss"):
            assert run.found[method][at(0.2)] >= 0.8  # vs about 0.2 expected at random
            assert run.found[method][-1] == 1.0
        assert run.found["random"][-1] == 1.0 and run.found["random"][at(0.2)] < 0.6
        for method, acc in run.accuracy.items():  # every label fixed = the clean problem, same optimum
            assert acc[-1] == pytest.approx(run.accuracy_clean, abs=1e-12), method
        assert len(run.flipped) == 24 and (run.noisy[run.flipped] != small_digits().y_train[run.flipped]).all()


def test_claim_compares_mean_found_at_each_fraction(small_runs):
    claim = check_claim(small_runs)
    assert claim.fractions[0] == pytest.approx(0.01) and claim.fractions[-1] == pytest.approx(0.3)
    mean = np.mean([r.found["self-influence"] - r.found["training loss"] for r in small_runs], axis=0)
    np.testing.assert_allclose(claim.margins, mean[1:31])
    assert claim.holds == bool((mean[1:31] > 0).all())


def _npz(path, X, y):
    np.savez(path, X=X, y=y)
    return path


def _invoke(*args):
    return CliRunner().invoke(main, ["triage", *args])


def test_cli_triage_on_files_writes_report_figure_and_csv_and_leaves_inputs(tmp_path):
    s = small_digits(200, 60)
    train, test = _npz(tmp_path / "train.npz", s.X_train, s.y_train), _npz(tmp_path / "test.npz", s.X_test, s.y_test)
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (train, test)]
    out = tmp_path / "out"
    result = _invoke("--train", str(train), "--test", str(test), "--seed", "0", "--seed", "5", "--flip", "0.15",
                     "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "fraction of flipped labels found" in result.stdout and "self-influence found more flips" in result.stdout
    assert "fits" in result.stdout and "of the flipped ones" in result.stdout
    assert "seed 5: fixing the checked labels and retraining" in result.stderr  # progress within each seed
    assert {p.name for p in out.iterdir()} == {"report.html", "triage.png", "found.csv", "accuracy.csv"}
    rows = (out / "found.csv").read_text().splitlines()
    assert rows[0] == "seed,method,fraction_checked,fraction_found" and len(rows) == 1 + 2 * 3 * 101
    assert rows[-1].startswith("5,random,1.00,1.0")
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in (train, test)] == before
    again = _invoke("--train", str(train), "--test", str(test), "--out", str(out))
    assert again.exit_code == 1 and "is not empty" in again.output and "--force" in again.output


def test_cli_triage_as_is_ranks_given_labels(tmp_path):
    s = small_digits(150, 30)
    train, test = _npz(tmp_path / "train.npz", s.X_train, s.y_train), _npz(tmp_path / "test.npz", s.X_test, s.y_test)
    result = _invoke("--train", str(train), "--test", str(test), "--as-is", "--top", "4", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    ranking = np.loadtxt(tmp_path / "o" / "ranking.csv", delimiter=",", skiprows=1)
    assert ranking.shape == (150, 5) and sorted(ranking[:, 1].astype(int).tolist()) == list(range(150))
    assert (np.diff(np.abs(ranking[:, 3])) <= 1e-12 * np.abs(ranking[:, 3]).max()).all()  # |self-influence| desc
    assert "first 4 training points to check" in result.stdout


def test_flip_labels_and_check_claim_refuse_what_they_cannot_mean():
    from infl.errors import InputError
    from infl.triage import check_claim, flip_labels

    for labels, classes in (([0, 1] * 10, 2.5), ([0.0, 1.0] * 10, 2), ([0, 3] * 10, 2)):
        with pytest.raises(InputError, match="integer labels 0..classes-1"):
            flip_labels(np.array(labels), 0.5, classes, 0)
    with pytest.raises(InputError, match="at least one TriageRun"):
        check_claim([])
    from infl.triage import check_seeds

    with pytest.raises(InputError, match="integers >= 0"):
        check_seeds([-1])
    run = type("Run", (), {"checked": np.round(np.arange(101) * 0.01, 2)})()  # held vacuously over no fraction
    for up_to in (-1, float("nan"), 0.001, 2):
        with pytest.raises(InputError, match=r"up_to must be a fraction of the data in \[0.01, 1\]"):
            check_claim([run], up_to)


@pytest.mark.parametrize("option", [["--flip", "0.2"], ["--seed", "3"]])
def test_cli_as_is_refuses_the_options_of_flipping(tmp_path, option):
    """They were ignored without a word: a user asking for 20% flips got the labels ranked as given."""
    result = _invoke("--data", "digits", "--as-is", *option, "--out", str(tmp_path / "o"))
    assert result.exit_code == 2 and f"{option[0]} applies only when labels are flipped" in result.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flip", ["0", "1", "-0.2", "nan", "inf"])
def test_cli_bad_flip_fraction_is_a_clean_error(tmp_path, flip):
    result = _invoke("--data", "digits", "--flip", flip, "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--flip must be a number strictly between 0 and 1" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_single_class_data_is_a_clean_error(tmp_path):
    X = np.random.default_rng(0).random((20, 4))
    train, test = _npz(tmp_path / "tr.npz", X, np.zeros(20)), _npz(tmp_path / "te.npz", X, np.zeros(20))
    result = _invoke("--train", str(train), "--test", str(test), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "at least 2 classes" in result.output and "Traceback" not in result.output


def _self_influence(split: Split, labels: np.ndarray, l2: float) -> np.ndarray:
    model = fit_logistic(split.X_train, labels, split.classes, l2, tol=1e-10)
    return Influence(model, cross_entropy, l2=l2).fit((split.X_train, labels)).self_influence().numpy()


def test_dropping_features_empty_in_training_keeps_self_influence_and_predictions():
    s = small_digits(150, 40)
    reduced = without_empty_features(s)
    assert reduced.X_train.shape[1] < s.X_train.shape[1] and reduced.X_test.shape[1] == reduced.X_train.shape[1]
    np.testing.assert_allclose(_self_influence(reduced, s.y_train, 0.01), _self_influence(s, s.y_train, 0.01),
                               rtol=1e-6)
    full, small = (fit_logistic(x.X_train, s.y_train, 10, 0.01) for x in (s, reduced))
    with torch.no_grad():
        np.testing.assert_allclose(small(torch.as_tensor(reduced.X_test)), full(torch.as_tensor(s.X_test)), atol=1e-7)


def test_self_influence_beats_loss_only_when_the_model_memorises_the_flips():
    """p = 650 > n = 300: with weak l2 the model fits the flipped labels (their loss drops) but their
    self-influence stays high; with strong l2 it cannot fit them and their loss is the better signal."""
    s = small_digits(300, 50)
    mean_lead = {}
    for l2 in (1e-1, 1e-5):
        runs = triage(s, flip=0.1, seeds=(0, 1, 2), l2=l2, fixed=(), tol=1e-7)
        mean_lead[l2] = np.mean([r.found["self-influence"][1:31] - r.found["training loss"][1:31] for r in runs])
        fitted = np.mean([r.flips_fitted for r in runs])
        assert fitted > 0.9 if l2 < 1e-3 else fitted < 0.1
    assert mean_lead[1e-5] > 0 > mean_lead[1e-1]


def test_retraining_preconditioned_by_the_noisy_hessian_reaches_the_same_optimum():
    s = small_digits(150, 10)
    noisy, _ = flip_labels(s.y_train, 0.2, 10, seed=0)
    model = fit_logistic(s.X_train, noisy, 10, 1e-3, tol=1e-10)
    factor = Influence(model, cross_entropy, l2=1e-3).fit((s.X_train, noisy)).solver.factor
    plain = fit_logistic(s.X_train, s.y_train, 10, 1e-3, init=model, tol=1e-10)
    fast = fit_logistic(s.X_train, s.y_train, 10, 1e-3, init=model, tol=1e-10, factor=factor)
    for a, b in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=5e-6)  # |grad| <= 1e-10, l2 = 1e-3
