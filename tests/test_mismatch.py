"""Domain mismatch (paper section 5.3): drivers of wrong predictions and over-represented feature values."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infl import Influence, InputError
from infl.cli import main
from infl.losses import cross_entropy
from infl.mismatch import feature_values, find_drivers, over_represented, rows_where
from infl.testing import dense_scores
from infl.train import fit_logistic


def mismatched(seed: int = 0):
    """Binary task from 3 noisy features, plus a subgroup indicator. The subgroup's features sit on the
    class boundary, so only the indicator tells it apart; training holds only 4 subgroup points, all of
    label 0; the test subgroup has label 1 (the paper's children, made synthetic)."""
    rng = np.random.default_rng(seed)

    def draw(n, sub, label=None):
        y = rng.integers(0, 2, n) if label is None else np.full(n, label)
        centre = np.full((n, 1), 0.5) if sub else y[:, None]
        X = np.column_stack([centre + (0.1 if sub else 0.8) * rng.standard_normal((n, 3)), np.full(n, float(sub))])
        return X, y

    Xa, ya = draw(300, 0)
    Xs, ys = draw(4, 1, label=0)
    Xt, yt = draw(6, 1, label=1)
    return np.vstack([Xa, Xs]), np.concatenate([ya, ys]), Xt, yt


def test_drivers_flag_the_few_subgroup_points_and_name_the_subgroup():
    X, y, Xt, yt = mismatched()
    model = fit_logistic(X, y, 2, l2=0.001)
    predicted = model(torch.as_tensor(Xt)).argmax(1).numpy()
    wrong = np.flatnonzero(predicted != yt)
    assert len(wrong) == 6  # the mismatch makes the subgroup's test points wrong
    inf = Influence(model, cross_entropy, l2=0.001).fit((X, y))
    drivers = find_drivers(inf, (Xt, yt), wrong, k=4, threshold=10)
    assert sorted(drivers.top.tolist()) == [300, 301, 302, 303]
    assert set(drivers.outsized.tolist()) == {300, 301, 302, 303}
    assert drivers.weight[300:].min() > 30 * np.median(drivers.weight[:300])
    best = over_represented(X, drivers.top, ["a", "b", "c", "subgroup"], min_count=2)[0]
    assert (best.feature, best.value, best.count) == ("subgroup", "1", 4)
    assert best.lift == pytest.approx(1.0 / (4 / 304))


def mismatch_benchmark():
    """benchmarks/mismatch.py as a module."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("mismatch_benchmark", Path(__file__).parents[1] / "benchmarks/mismatch.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_on_real_data_the_kept_subgroup_points_lead_the_drivers():
    """benchmarks/mismatch.py's setting on scikit-learn's diabetes data: the lowest body-mass-index bracket
    filtered out of training but for 4 points of its minority label. The filtering makes the subgroup's test
    predictions wrong, and from the wrong predictions alone a kept point comes out as a leading driver and the
    bracket as the most over-represented value."""
    bench = mismatch_benchmark()
    Z, y, columns = bench.load("diabetes")
    subgroup = Z[:, columns.index("bmi Q1")] == 1
    row = bench.one_seed(Z, y, columns, subgroup, seed=3)
    assert row["acc_after"] < row["acc_before"] - 0.4
    assert min(row["all"]["ranks"]) <= 3 and row["all"]["first"].startswith("bmi Q1 = 1 ")


def test_on_a_survey_of_thousands_the_kept_points_stand_out_as_in_the_paper():
    """The paper's scale: statsmodels' survey of 6,366 women, the newly-wed (370, 4% label 1) filtered out of
    training but for 4 of label 1. Asked about the subgroup's wrong predictions, the tool flags exactly the 4
    kept points, each far above the paper's 10x line, and names the subgroup."""
    pytest.importorskip("statsmodels", reason="pip install statsmodels (in the test extra)")
    bench = mismatch_benchmark()
    Z, y, columns = bench.load("fair")
    subgroup = Z[:, columns.index("yrs_married = 0.5")] == 1
    row = bench.one_seed(Z, y, columns, subgroup, seed=0)
    assert row["acc_after"] < row["acc_before"] - 0.2
    asked = row["subgroup"]
    assert sorted(asked["ranks"]) == [1, 2, 3, 4] and min(asked["weights"]) > 20 and asked["other_max"] < 15
    assert asked["flagged_kept"] == 4
    assert asked["first"].startswith("yrs_married = 0.5 = 1 ")


def test_weights_follow_the_definition_on_dense_scores(logreg):
    inf = Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    drivers = find_drivers(inf, (logreg.Xt, logreg.yt), [1, 4], k=5, threshold=2.0)
    S = dense_scores(logreg.model, logreg.loss_fn, logreg.train, (logreg.Xt[[1, 4]], logreg.yt[[1, 4]]),
                     logreg.l2).numpy()
    np.testing.assert_allclose(drivers.scores, S, rtol=1e-8, atol=1e-12)
    weight = (np.abs(S) / np.abs(S).mean(1, keepdims=True)).mean(0)
    np.testing.assert_allclose(drivers.weight, weight, rtol=1e-8)
    assert drivers.top.tolist() == np.argsort(-weight, kind="stable")[:5].tolist()
    assert drivers.outsized.tolist() == np.flatnonzero(weight >= 2.0).tolist()
    import pandas as pd
    frame = pd.DataFrame(logreg.Xt.numpy()), pd.Series(logreg.yt.numpy())  # rows, not columns, picked
    np.testing.assert_allclose(find_drivers(inf, frame, [1, 4], k=5, threshold=2.0).weight, drivers.weight, rtol=1e-12)


def test_feature_values_keep_few_values_and_bin_the_rest_by_quantiles():
    codes, labels = feature_values(np.array([0.0, 1.0, 1.0, 0.0]))
    assert codes.tolist() == [0, 1, 1, 0] and labels == ["0", "1"]
    codes, labels = feature_values(np.arange(8.0), bins=4)
    assert codes.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and labels[0].startswith("Q1 [0, ")


@pytest.mark.parametrize("kwargs, message", [
    ({"wrong": []}, "no wrong test predictions"),
    ({"wrong": [12]}, r"wrong \(test indices\) must be in 0..11 \(12 rows\), got \[12\]"),
    ({"wrong": [0], "threshold": float("nan")}, "threshold must be a finite number > 0"),
    ({"wrong": [0], "k": 0}, "k must be an integer from 1"),
    ({"wrong": [0], "threshold": True}, "threshold must be a finite number > 0"),
    ({"wrong": np.arange(12) < 3}, "not a mask; pass np.flatnonzero"),  # read as indices 0 and 1 before
    ({"wrong": [1.7]}, r"wrong \(test indices\) must be integers"),
])
def test_bad_input_is_refused(logreg, kwargs, message):
    inf = Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    with pytest.raises(InputError, match=message):
        find_drivers(inf, (logreg.Xt, logreg.yt), **kwargs)


def test_over_represented_lists_only_values_commoner_among_the_top_rows():
    X = np.array([[0.0], [0.0], [0.0], [1.0], [1.0], [1.0], [1.0], [1.0]])  # value 1: 5/8 of training
    found = over_represented(X, [0, 1, 3], ["f"], min_count=1)  # top: 2/3 value 0 (vs 3/8), 1/3 value 1 (vs 5/8)
    assert [(o.value, o.count) for o in found] == [("0", 2)] and found[0].lift > 1
    assert over_represented(X, [0, 3], ["f"], min_count=1)[0].value == "0"  # 1/2 vs 3/8
    assert over_represented(X, [3, 4], ["f"], min_count=1)[0].lift == pytest.approx(1 / (5 / 8))
    assert over_represented(X, list(range(8)), ["f"], min_count=1) == []  # the top rows are the training set


def test_over_represented_refuses_rows_it_cannot_read():
    X = np.arange(20.0).reshape(10, 2)
    for top, words in (([10], r"row indices\) must be in 0..9"), ([-1], "must be in 0..9"), ([0.5], "must be integers"),
                       ([True], "not a mask"), ([], "top is empty")):
        with pytest.raises(InputError, match=words):
            over_represented(X, top)
    with pytest.raises(InputError, match="bins must be an integer >= 1"):
        over_represented(X, [0, 1], bins=0)
    with pytest.raises(InputError, match=r"shape \(n, d\)"):
        over_represented(X[:, 0], [0, 1])


def test_numpy_numbers_are_accepted(logreg):
    inf = Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    plain = find_drivers(inf, (logreg.Xt, logreg.yt), wrong=[0], k=3, threshold=5.0)
    numpy = find_drivers(inf, (logreg.Xt, logreg.yt), wrong=[0], k=np.int64(3), threshold=np.float32(5.0))
    assert repr(plain) == repr(numpy)


def test_cli_mismatch_flags_the_subgroup_and_writes_a_report(tmp_path):
    X, y, Xt, yt = mismatched()
    assert X.shape[1] == 4  # a square number of features in (n, d) arrays: a table, not 2 x 2 images
    np.savez(tmp_path / "train.npz", X=X, y=y)
    np.savez(tmp_path / "test.npz", X=np.vstack([Xt, X[:2]]), y=np.concatenate([yt, [0, 1]]))  # two classes
    args = ["mismatch", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"), "--top", "4",
            "--l2", "0.001", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrong test predictions; 4 training point(s) at or above 10x" in result.stdout
    listed = [int(i) for i in re.findall(r"train #(\d+)", result.stdout)]
    assert sorted(listed) == [300, 301, 302, 303]
    assert "over-represented: feature 3 = 1: 100% of drivers vs 1.3% of training" in result.stdout
    assert (tmp_path / "out" / "report.html").exists()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "is not empty" in again.output
    bad = CliRunner().invoke(main, [*args[:-2], "--threshold", "-1", "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "--threshold" in bad.output and "finite number > 0" in bad.output


def test_rows_where_combines_conditions_and_names_what_is_wrong():
    X = np.array([[17.5, 0.0], [22.0, 1.0], [17.5, 2.0]])
    names = ["age", "children"]
    assert rows_where(X, ["age=17.5"], names).tolist() == [True, False, True]
    assert rows_where(X, ["age = 17.5", "children>=1"], names).tolist() == [False, False, True]
    assert rows_where(X, ["feature 1 != 1"]).tolist() == [True, False, True]
    assert rows_where(X, [], names).all()
    assert rows_where(X, ["children<2", "age>17.5"], names).tolist() == [False, True, False]
    assert rows_where(X, ["age <= 17.5"], names).tolist() == [True, False, True]
    stored = X.astype(np.float32).astype(np.float64)  # a float32 file: 0.1 is read as 0.10000000149
    assert rows_where(stored * 0.1, ["feature 0=1.75", "feature 0<=1.75"]).tolist() == [True, False, True]
    assert rows_where(stored * 0.1, ["feature 0<1.75"]).tolist() == [False, False, False]
    odd = ["wow!", "x<"]  # names holding operator characters
    assert rows_where(X, ["wow!=17.5", "x<<=1"], odd).tolist() == [True, False, False]
    for condition, message in [("height=3", "no column 'height'.*age, children"), ("age", "COLUMN=VALUE"),
                               ("age=young", "not a number"), ("age=nan", "not a finite number")]:
        with pytest.raises(InputError, match=message):
            rows_where(X, [condition], names)
    with pytest.raises(InputError, match="3 column names for 2 columns"):
        rows_where(X, ["age=1"], ["age", "children", "extra"])


def test_cli_mismatch_where_asks_about_the_named_rows_only(tmp_path):
    """Wrong predictions outside the subgroup dilute the kept points' average weight; --where asks about the
    subgroup's wrong predictions alone, as the paper asks about one child."""
    X, y, Xt, yt = mismatched()
    pad = lambda A: np.column_stack([A, np.zeros(len(A))])  # noqa: E731
    np.savez(tmp_path / "train.npz", X=pad(X), y=y)
    flipped = np.vstack([X[:40], Xt])
    np.savez(tmp_path / "test.npz", X=pad(flipped), y=np.concatenate([1 - y[:40], yt]))  # 40 ordinary wrong rows
    args = ["mismatch", "--train", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"), "--top", "4",
            "--l2", "0.001", "--max-wrong", "100"]
    asked = CliRunner().invoke(main, [*args, "--where", "feature 3=1", "--out", str(tmp_path / "a")])
    assert asked.exit_code == 0, asked.output
    assert "6 wrong test predictions; 4 training point(s) at or above 10x" in asked.stdout
    assert sorted(int(i) for i in re.findall(r"train #(\d+)", asked.stdout)) == [300, 301, 302, 303]
    assert "on test rows where feature 3=1" in (tmp_path / "a" / "report.html").read_text()
    everything = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b")])
    assert everything.exit_code == 0, everything.output
    assert re.search(r"(\d+) wrong test predictions; 0 training point", everything.stdout)
    for condition, message in [("feature 3=7", "no test row meets feature 3=7"), ("colour=1", "no column 'colour'"),
                               ("feature 3", "COLUMN=VALUE")]:
        bad = CliRunner().invoke(main, [*args, "--where", condition, "--out", str(tmp_path / "c")])
        assert bad.exit_code == 2 and "--where" in bad.output and message in bad.output, bad.output
        assert not (tmp_path / "c").exists()
    clear = np.flatnonzero((y == 1) & (X[:, :3].min(1) > 1.2))[:3]  # far on their class's side: predicted right
    np.savez(tmp_path / "easy.npz", X=pad(np.vstack([X[clear], Xt])), y=np.concatenate([y[clear], yt]))
    right = CliRunner().invoke(main, [*args[:3], "--test", str(tmp_path / "easy.npz"), *args[5:], "--where",
                                      "feature 3=0", "--out", str(tmp_path / "d")])
    assert right.exit_code == 2 and "predicts all 3 test row(s) where feature 3=0 correctly" in right.output
