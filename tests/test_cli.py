"""Tests for the `infl` command line (click's CliRunner) and the HTML report it writes."""

from __future__ import annotations

import hashlib
import html
import re

import numpy as np
import pytest
from click.testing import CliRunner

from infl.cli import loo_indices, main
from infl.report import figure_loo, top_k


def _invoke(*args: str):
    return CliRunner().invoke(main, ["explain", *args])


def _blobs(path, n: int, d: int = 5, seed: int = 0):
    """A tiny 3-class problem of Gaussian blobs saved as .npz (X (n, d) in [0, 1], y (n,))."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    X = np.clip(0.5 + 0.15 * rng.standard_normal((n, d)) + 0.2 * (y[:, None] == np.arange(d) % 3), 0, 1)
    np.savez(path, X=X, y=y)
    return path


def _assert_self_contained(html: str) -> None:
    assert '<img src="data:image/png;base64,' in html
    assert not re.search(r"(src|href)=[\"']?https?:", html), "the report links an external resource"
    assert "http" not in html
    assert "<script" not in html


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One real run on the built-in digits, shared by the tests that read its output."""
    out = tmp_path_factory.mktemp("run") / "out"
    result = _invoke("--data", "digits", "--loo", "6", "--top", "3", "--out", str(out))
    return result, out


def test_explain_digits_prints_tables_and_writes_report(digits_run):
    result, out = digits_run
    assert result.exit_code == 0, result.output
    stdout = result.stdout
    assert "train accuracy" in stdout and "test accuracy" in stdout
    assert stdout.count("most harmful (score > 0") == 3  # default: the first 3 misclassified test points
    assert stdout.count("most helpful (score < 0") == 3
    table_rows = re.findall(r"^\s+[123]\s+\d+\s+\d\s+[+-]\d", stdout, flags=re.M)
    assert len(table_rows) == 3 * 2 * 3  # 3 test points x (harmful, helpful) x top 3
    pearson = re.search(r"leave-one-out on test point \d+ \(6 retrains\): Pearson R = ([\d.]+)", stdout)
    assert pearson and float(pearson.group(1)) > 0.9
    assert f"report: {out / 'report.html'}" in stdout
    assert "leave-one-out" in result.stderr and "fitting influence" in result.stderr  # progress goes to stderr


def test_report_is_self_contained_html(digits_run):
    _, out = digits_run
    html = (out / "report.html").read_text()
    _assert_self_contained(html)
    assert html.count('<img src="data:image/png;base64,') == 3 * (1 + 2 * 3) + 1  # points, their top-k, LOO plot
    assert "Pearson R" in html and "Run summary" in html and "Cholesky" in html
    assert (out / "loo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_non_empty_output_folder_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _invoke("--data", "digits", "--out", str(out))
    assert result.exit_code != 0
    assert "is not empty" in result.output and "--force" in result.output
    assert "Traceback" not in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_npz_files_with_force_and_no_images(tmp_path):
    train, test = _blobs(tmp_path / "train.npz", 60), _blobs(tmp_path / "test.npz", 15, seed=1)
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (train, test)]
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    result = _invoke("--train", str(train), "--test", str(test), "--test-index", "2", "--test-index", "0",
                     "--loo", "4", "--top", "2", "--out", str(out), "--force")
    assert result.exit_code == 0, result.output
    assert "test point 2:" in result.stdout and "test point 0:" in result.stdout
    assert "leave-one-out on test point 2 (4 retrains)" in result.stdout
    _assert_self_contained((out / "report.html").read_text())  # d = 5 is no square: feature bar charts
    assert (out / "old.txt").exists()
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in (train, test)] == before
    again = _invoke("--train", str(train), "--test", str(test), "--loo", "0", "--out", str(out), "--force")
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == ["old.txt", "report.html"]  # no loo.png left from the first run


@pytest.mark.parametrize("failure", ["--test-index=9999", "interrupt"])
def test_a_failed_forced_run_puts_back_what_it_would_replace(tmp_path, monkeypatch, failure):
    """--force replaces the command's files only once the new run has succeeded: an error or Ctrl-C leaves the
    previous results as they were (and nothing of the failed run)."""
    train, test = _blobs(tmp_path / "train.npz", 60), _blobs(tmp_path / "test.npz", 15, seed=1)
    out = tmp_path / "out"
    first = _invoke("--train", str(train), "--test", str(test), "--loo", "4", "--out", str(out))
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["loo.png", "report.html"]
    args = ["--train", str(train), "--test", str(test), "--loo", "0", "--out", str(out), "--force"]
    if failure == "interrupt":  # after the new report is written, before the command returns
        import infl.cli

        write = infl.cli.write_explain_report

        def write_then_interrupt(*a, **k):
            write(*a, **k)
            raise KeyboardInterrupt

        monkeypatch.setattr(infl.cli, "write_explain_report", write_then_interrupt)
    else:
        args.append(failure)
    result = _invoke(*args)
    assert result.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_files_set_aside_by_a_killed_run_come_back(tmp_path):
    """A run killed mid-way leaves out/.infl-replaced: the next forced run restores it first, so a failure then
    keeps every earlier file, and a success leaves none of them."""
    train, test = _blobs(tmp_path / "train.npz", 60), _blobs(tmp_path / "test.npz", 15, seed=1)
    out = tmp_path / "out"
    (out / ".infl-replaced").mkdir(parents=True)
    (out / ".infl-replaced" / "report.html").write_text("earlier report")
    (out / ".infl-replaced" / "loo.png").write_text("earlier figure")
    (out / "report.html").write_text("partial report of the killed run")
    args = ["--train", str(train), "--test", str(test), "--loo", "0", "--out", str(out), "--force"]
    assert _invoke(*args, "--test-index", "999").exit_code != 0
    assert {p.name: p.read_text() for p in out.iterdir()} == {"report.html": "earlier report",
                                                             "loo.png": "earlier figure"}
    assert _invoke(*args).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]


def test_solver_knob_advice_becomes_options_the_command_has(tmp_path):
    """The commands run each solver with its defaults: advice to raise a Python knob (rank, depth, refine, scale)
    is spelled as a --solver choice, from the solvers' real messages."""
    import warnings

    import torch

    import infl
    from infl.cli import spell

    X, y = torch.randn(80, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), torch.arange(80) % 3
    model = torch.nn.Linear(12, 3).double()
    said = []
    for solver in [infl.LiSSA(depth=2), infl.LiSSA(max_depth=3), infl.LiSSA(scale=1e-4),
                   infl.Arnoldi(rank=3, refine=1), infl.EKFAC(refine=1)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                infl.Influence(model, infl.losses.cross_entropy, l2=0.01, solver=solver,
                               stationarity_tol=float("inf")).fit((X, y)).scores((X[:3], y[:3]))
            except infl.InflError as error:
                said.append(str(error))
        said += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(said) >= 5
    for message in map(spell, said):
        assert "--solver" in message
        assert not re.search(r"\b(?:Raise|raise) (?:depth|max_depth|refine|scale|tol)", message)
    result = _invoke("--train", str(_blobs(tmp_path / "train.npz", 60)), "--test", str(_blobs(tmp_path / "t.npz", 9)),
                     "--solver", "arnoldi", "--loo", "0", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "use --solver exact" in result.output and "rank <=" not in result.output


def test_library_advice_is_spelled_as_the_command_line_takes_it():
    """The library's messages name Python arguments; the commands rewrite them into options they have (there is
    no curvature option, and the command's convex model turns an indefinite Hessian into a scaling problem)."""
    import torch

    import infl
    from infl.cli import spell
    from infl.solvers.exact import _indefinite, _precision_fix

    from infl.operators import Dense

    H = torch.diag(torch.tensor([1.0, -2.0], dtype=torch.float64))
    message = spell(str(_indefinite(H, Dense(H))))
    assert "pass --damping 4 (any value above 2), or a larger --l2" in message and "standardise" in message
    assert "curvature=" not in message and "damping=" not in message
    assert spell(_precision_fix(torch.float64)).startswith("Add --damping (or a larger --l2)")
    projected = ("the projected curvature is not positive definite (smallest eigenvalue -0.1); pass a damping above "
                 "the current 0 to the Influence, or use curvature='gauss-newton'")
    assert "pass a --damping above 0, or a larger --l2" in spell(projected) and "curvature=" not in spell(projected)

    with pytest.raises(infl.InputError) as rank:
        infl.Arnoldi(rank=10).fit(Dense(torch.eye(5, dtype=torch.float64)))
    assert spell(str(rank.value)).endswith("use --solver exact (the whole spectrum, cheap at this size)")  # no --rank
    lissa = spell("LiSSA: ... so the series cannot converge. Add damping > 0.3, or use curvature='gauss-newton'")
    assert "Add --damping above 0.3, or a larger --l2" in lissa and "curvature=" not in lissa
    assert "max_params" not in spell("Use solver='cg' (matrix-free), or raise max_params if the memory is there")
    loo = ("leave_one_out: theta_hat is not a minimum (||grad R|| = 3.2e+07), so ... (a shift per test point: the "
           "correlations keep, the values do not): train to convergence, or have retrain return the same retraining on "
           "all points under the key None, the baseline (e.g. newton_steps on removal_weights(n, indices, "
           "baseline=True) with proximal = the damping, README)")
    assert spell(loo).endswith("the values do not): the command's training stopped short of the minimum: standardise "
                               "features of very different sizes (they slow L-BFGS), or raise --l2")
    budget = spell("the optimum is not tight: standardise features of very different sizes (they make line searches "
                   "long), or raise max_iter (it sets that budget)")
    assert budget.endswith("(they make line searches long), or raise --l2") and "max_iter" not in budget
    for solver in ("KFAC(refine=4)", "EKFAC(refine=4)", "Arnoldi(refine=5)"):  # the solvers' own advice
        advice = f"{solver} (block CG steps on the true curvature; more where it still warns) or solver='cg' solves it"
        assert spell(advice) == "--solver exact or --solver cg solves it"


def test_missing_file_is_a_clean_error(tmp_path):
    test = _blobs(tmp_path / "test.npz", 15)
    result = _invoke("--train", str(tmp_path / "nope.npz"), "--test", str(test), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "nope.npz: file does not exist; check the path" in result.output
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")  # one line, after the progress lines


def test_test_index_out_of_range_is_a_clean_error(tmp_path):
    result = _invoke("--data", "digits", "--test-index", "5000", "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "Error: --test-index 5000 is out of range: the test set has 359 points (indices 0 to 358)." in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, message", [
    (["--loo", "2"], "at least 3 points"),
    (["--l2", "-1"], "'--l2': must be a finite number >= 0, got -1"),
    (["--solver", "newton"], "'newton' is not one of 'exact', 'cg', 'lissa'"),
    (["--seed", "-1"], "-1 is not in the range"),
    (["--damping", "nan"], "'--damping': must be a finite number >= 0, got nan"),
    (["--l2", "inf"], "'--l2': must be a finite number >= 0, got inf"),
    (["--l2", "0"], "--l2: 0 with --damping 0 leaves the Hessian singular"),
])
def test_bad_option_values_are_clean_errors(tmp_path, args, message):
    result = _invoke("--data", "digits", "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_a_missing_csv_value_is_named_and_a_failed_run_leaves_no_output_folder(tmp_path):
    rows = "f1,f2,label\n" + "".join(f"{i},{'' if i == 3 else i % 5},{i % 2}\n" for i in range(12))
    (tmp_path / "train.csv").write_text(rows)
    (tmp_path / "test.csv").write_text(rows)
    out = tmp_path / "fresh" / "out"
    result = _invoke("--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"), "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "column 'f2' has 1 missing value(s) (first on line 5: ''); impute or drop those rows" in result.output
    assert not (tmp_path / "fresh").exists()


def test_an_output_folder_that_cannot_be_made_is_a_clean_error(tmp_path):
    (tmp_path / "file").write_text("x")
    for command in ("explain", "mismatch"):
        result = CliRunner().invoke(main, [command, "--data", "digits", "--out", str(tmp_path / "file" / "sub")])
        assert result.exit_code == 1 and "cannot write the output" in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize("extra, message", [
    ([], "--train and --test go together"),
    (["--data", "digits"], "--data digits and --train/--test are alternatives"),
])
def test_file_options_misused_are_usage_errors(tmp_path, extra, message):
    result = _invoke("--train", str(_blobs(tmp_path / "train.npz", 30)), "--out", str(tmp_path / "o"), *extra)
    assert result.exit_code == 2
    assert message in result.output


def test_loo_indices_take_largest_influence_then_random_others():
    scores = np.array([0.1, -5.0, 0.2, 3.0, -0.3, 0.0, 0.05])
    picked = loo_indices(scores, 4, seed=0)
    assert picked[:2].tolist() == [1, 3] and len(set(picked.tolist())) == 4
    assert loo_indices(scores, 4, seed=0).tolist() == picked.tolist()


def test_top_k_orders_harmful_and_helpful():
    harmful, helpful = top_k(np.array([0.5, -2.0, 3.0, -0.1]), 2)
    assert harmful.tolist() == [2, 0] and helpful.tolist() == [1, 3]
    harmful, helpful = top_k(np.array([0.5, -2.0, 3.0, -0.1, 0.0]), 4)  # k above either sign's count
    assert harmful.tolist() == [2, 0] and helpful.tolist() == [1, 3]


def test_figure_loo_saves_a_png(tmp_path):
    rng = np.random.default_rng(0)
    actual = rng.standard_normal(10)
    path = figure_loo(actual + 0.01 * rng.standard_normal(10), actual, tmp_path / "loo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_l2_so_large_that_training_overflows_is_named(tmp_path):
    train, test = _blobs(tmp_path / "train.npz", 30), _blobs(tmp_path / "test.npz", 6, seed=1)
    result = _invoke("--train", str(train), "--test", str(test), "--l2", "1e300", "--loo", "0",
                     "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "training with --l2 1e+300 gave NaN or infinite weights" in result.output
    assert "an --l2 of 1e-4 to 1" in result.output and "Traceback" not in result.output


def test_warnings_reach_the_report_and_it_shows_the_explained_points_solve(tmp_path):
    """A run whose model gets every test point right explains the first ones, and says so on stderr and atop the
    report; the report's solver row is the explained points' solve (leave-one-out solves again, one point)."""
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    X = rng.normal(size=(40, 3)) * 0.1 + 3 * y[:, None]  # far apart: every test point right
    np.savez(tmp_path / "tr.npz", X=X, y=y)
    np.savez(tmp_path / "te.npz", X=X[:6], y=y[:6])
    out = tmp_path / "out"
    run = _invoke("--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "te.npz"), "--loo", "4", "--solver",
                  "lissa", "--out", str(out))
    assert run.exit_code == 0, run.output
    assert "warning: the model gets no test point wrong, so the first 3 test points are explained" in run.stderr
    page = (out / "report.html").read_text()
    assert "Warnings (" in page and "the model gets no test point wrong" in page
    from infl import report
    assert report.RUN_WARNINGS == []  # not carried into pages written later in the same process
    solver = re.search(r"^solver: (.*)$", run.stdout, flags=re.M).group(1)
    assert "on 3 of 3 right-hand sides" in solver
    assert html.escape(solver) in page  # the same solve as stdout's, not leave-one-out's (1 of 1)
    quiet = _invoke("--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "te.npz"), "--test-index", "1",
                    "--loo", "0", "--out", str(tmp_path / "quiet"))
    assert quiet.exit_code == 0 and "Warnings (" not in (tmp_path / "quiet" / "report.html").read_text()


def test_l2_zero_on_separable_data_is_refused(tmp_path):
    """Without weight decay separable data have no minimum: the weights only grow, so influence means nothing."""
    rng = np.random.default_rng(1)
    y = np.arange(30) % 2
    np.savez(tmp_path / "tr.npz", X=rng.normal(size=(30, 2)) + 4 * y[:, None], y=y)
    run = _invoke("--train", str(tmp_path / "tr.npz"), "--test", str(tmp_path / "tr.npz"), "--l2", "0", "--damping",
                  "0.001", "--out", str(tmp_path / "o"))
    assert run.exit_code != 0 and "separates (train accuracy 1)" in run.output and "--l2 > 0" in run.output
    assert not (tmp_path / "o").exists()


def test_csv_messages_name_the_separator_and_the_labels_every_file_needs(tmp_path):
    (tmp_path / "semi.csv").write_text("a;b;label\n1;2;0\n3;4;1\n")
    (tmp_path / "tr.csv").write_text("a,b,label\n1,2,0\n3,4,1\n1,1,0\n")
    (tmp_path / "nolabel.csv").write_text("a,b\n1,2\n")
    (tmp_path / "text.csv").write_text("a,b,label\n1,x,0\n3,4,1\n1,1,0\n")
    run = _invoke("--train", str(tmp_path / "semi.csv"), "--test", str(tmp_path / "tr.csv"), "--out",
                  str(tmp_path / "o"))
    assert run.exit_code != 0 and "separated by ';'" in run.output and "comma-separated" in run.output
    run = _invoke("--train", str(tmp_path / "tr.csv"), "--test", str(tmp_path / "nolabel.csv"), "--out",
                  str(tmp_path / "o"))
    assert run.exit_code != 0 and "Every file needs its labels (test points too" in run.output
    assert "Pass --label-column NAME if they are under another name" in run.output
    run = _invoke("--train", str(tmp_path / "text.csv"), "--test", str(tmp_path / "tr.csv"), "--out",
                  str(tmp_path / "o"))
    assert run.exit_code != 0 and "non-numeric column 'b'" in run.output and "text_labels" not in run.output
