"""Bad input gets a clear error that names the problem and the fix."""

import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infl
from infl.errors import CurvatureError, InputError, NotFittedError

from conftest import trained


def influence(problem, **kw):
    return infl.Influence(problem.model, problem.loss_fn, l2=problem.l2, **kw)


def test_mismatched_lengths(logreg):
    with pytest.raises(InputError, match="train X has 90 examples but y has 89"):
        influence(logreg).fit((logreg.X, logreg.y[:-1]))


def test_empty_dataset(logreg):
    with pytest.raises(InputError, match="empty"):
        influence(logreg).fit((logreg.X[:0], logreg.y[:0]))


def test_nan_in_data(logreg):
    X = logreg.X.clone()
    X[3, 1] = math.nan
    with pytest.raises(InputError, match="NaN or inf in 1 example"):
        influence(logreg).fit((X, logreg.y))


def test_nan_in_parameters(logreg):
    with torch.no_grad():
        logreg.model.bias[0] = math.inf
    with pytest.raises(InputError, match="parameters contain NaN or inf.*bias"):
        influence(logreg).fit(logreg.train)


def test_test_input_of_wrong_shape(logreg):
    inf = influence(logreg).fit(logreg.train)
    with pytest.raises(InputError, match=r"per-example shape \(4,\) but the training inputs have \(5,\)"):
        inf.scores((logreg.Xt[:, :4], logreg.yt))
    soft = torch.nn.functional.one_hot(logreg.yt, 3).double()  # soft labels: cross-entropy takes them
    torch.testing.assert_close(inf.scores((logreg.Xt, soft)), inf.scores(logreg.test))


def test_test_targets_shaped_unlike_the_training_targets_are_named_when_the_loss_check_fails():
    """Train y (n, 1), test y (m,), and a loss that broadcasts them: the check's error blamed statistics over the
    batch only."""
    X = torch.randn(30, 2, dtype=torch.float64)
    y = X.sum(1, keepdim=True)
    model = trained(nn.Linear(2, 1).double(), lambda out, t: ((out - t) ** 2).sum(1), 0.1, X, y)
    mse = lambda out, t: ((out - t) ** 2).sum(1)  # noqa: E731
    inf = infl.Influence(model, mse, l2=0.1, stationarity_tol=float("inf")).fit((X, y))
    with pytest.raises(InputError, match=r"test targets have per-example shape \(\) but the training targets "
                       r"have \(1,\)"):
        inf.scores((X[:3], y[:3, 0]))


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_a_half_precision_model_is_told_to_use_a_float32_copy(logreg, solver):
    """CPU linear algebra has no float16 / bfloat16 kernels; the error was a forward-mode AD message whose advice
    failed the same way."""
    half = copy.deepcopy(logreg.model).to(torch.bfloat16)
    inf = infl.Influence(half, logreg.loss_fn, l2=logreg.l2, solver=solver, stationarity_tol=float("inf"))
    with pytest.raises(InputError, match=r"the model is in bfloat16, .*copy.deepcopy\(model\).float\(\)"):
        inf.fit(logreg.train).scores(logreg.test)


def test_model_that_cannot_take_the_input(logreg):
    with pytest.raises(InputError, match="could not evaluate a batch of inputs shaped"):
        influence(logreg).fit((logreg.X[:, :4], logreg.y))


def test_scalar_loss(logreg):
    inf = infl.Influence(logreg.model, lambda out, y: F.cross_entropy(out, y), l2=logreg.l2)
    with pytest.raises(InputError, match="one loss per example.*reduction='none'"):
        inf.fit(logreg.train)


def test_training_mode_with_dropout(logreg):
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.1)).double().train()
    with pytest.raises(InputError, match=r"training mode.*Dropout.*model.eval\(\)"):
        infl.Influence(model, logreg.loss_fn).fit(logreg.train)
    assert model.training  # the mode is the user's: reported, never changed


def test_indefinite_hessian_exact_says_damping(mlp):
    with torch.no_grad():  # a saddle region: far from the optimum, no l2
        for p in mlp.model.parameters():
            p.mul_(8.0)
    with pytest.warns(UserWarning, match="not at a stationary point"):
        with pytest.raises(CurvatureError, match="not positive definite: its smallest eigenvalue is -.*damping"):
            infl.Influence(mlp.model, mlp.loss_fn, l2=0.0).fit(mlp.train)


def test_far_from_stationary_point_warns_with_gradient_norm(logreg):
    with torch.no_grad():
        logreg.model.weight.add_(0.5)
    with pytest.warns(UserWarning, match=r"\|\|grad R\|\| = [0-9.e-]+"):
        influence(logreg).fit(logreg.train)


def test_unknown_solver_and_bad_settings(logreg):
    with pytest.raises(InputError, match="unknown solver 'newton'; choose one of exact, cg, lissa"):
        influence(logreg, solver="newton")
    with pytest.raises(InputError, match="damping must be a finite number >= 0"):
        influence(logreg, damping=-1.0)
    with pytest.raises(InputError, match="l2 must be a finite number >= 0"):
        infl.Influence(logreg.model, logreg.loss_fn, l2=float("nan"))
    with pytest.raises(InputError, match="batch_size must be an integer >= 1"):
        influence(logreg, batch_size=0)
    for bad in (-1.0, float("nan"), "abc", "inf"):  # a negative one warned at every minimum, nan switched it off
        with pytest.raises(InputError, match=r"stationarity_tol must be a number >= 0 \(float\('inf'\) turns"):
            influence(logreg, stationarity_tol=bad)
    with pytest.raises(InputError, match="keep_train_grads must be True or False, got 'no'"):
        influence(logreg, keep_train_grads="no")
    for fine in (0, np.float32(1e-3), torch.tensor(float("inf")), np.inf):
        influence(logreg, stationarity_tol=fine)
    for fine in (1, 0, np.bool_(True), torch.tensor(True)):
        assert influence(logreg, keep_train_grads=fine).keep_train_grads is bool(fine)


def test_queries_before_fit(logreg):
    with pytest.raises(NotFittedError, match=r"call fit\(train\)"):
        influence(logreg).scores(logreg.test)


def test_training_index_out_of_range(logreg):
    inf = influence(logreg).fit(logreg.train)
    with pytest.raises(InputError, match=r"training indices \[90\] are out of range for 90"):
        inf.up_params([90])
    with pytest.raises(InputError, match=r"one-dimensional .* got shape \(2, 2\); flatten them"):
        inf.up_params([[1, 2], [3, 4]])  # was flattened into 4 answers without a word
    mask = torch.zeros(90, dtype=torch.bool)
    mask[[4, 7]] = True
    torch.testing.assert_close(inf.up_params(torch.nonzero(mask)), inf.up_params([4, 7]))  # a (2, 1) column
    with pytest.raises(InputError, match="must be integers .* got <U1 values"):
        inf.pert_loss(logreg.test, ["a"])  # was a bare TypeError from torch


class TwoHeads(nn.Module):
    """Returns a tuple: class logits and a regression output."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.cls, self.reg = nn.Linear(4, 6), nn.Linear(6, 3), nn.Linear(6, 2)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.cls(h), self.reg(h)


def test_tuple_outputs_refused_where_the_loss_is_factored_through_the_outputs():
    """The Hessian handles a model with two heads; Gauss-Newton and the Kronecker factors need one output tensor."""
    torch.manual_seed(0)
    model = TwoHeads().double().eval()
    X = torch.randn(30, 4, dtype=torch.float64)
    y = torch.cat([torch.randint(0, 3, (30, 1)).double(), torch.randn(30, 2, dtype=torch.float64)], 1)
    loss = lambda o, t: F.cross_entropy(o[0], t[:, 0].long(), reduction="none") + (o[1] - t[:, 1:]).square().sum(1)  # noqa: E731
    inf = infl.Influence(model, loss, l2=0.05, damping=1.0).fit((X, y))
    assert torch.isfinite(inf.scores((X[:2], y[:2]))).all()
    for kw in [dict(curvature="gauss-newton"), dict(curvature="gauss-newton", solver="cg"), dict(solver="ekfac")]:
        with pytest.raises(InputError, match="needs a model that returns one tensor.*returns a tuple.*torch.cat"):
            infl.Influence(model, loss, l2=0.05, damping=1.0, **kw).fit((X, y))


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_empty_index_lists_give_empty_answers(name, request):
    problem = request.getfixturevalue(name)
    inf = influence(problem).fit(problem.train)
    assert inf.up_params([]).shape == (0, inf.objective_.p)
    assert inf.pert_loss(problem.test, []).shape == (problem.test[0].shape[0], 0, *problem.X.shape[1:])


def test_a_label_the_loss_cannot_take_is_named_by_its_row(logreg):
    y = logreg.y.clone()
    y[70] = 7  # three classes
    with pytest.raises(InputError, match=r"loss fails on example 70 .*Target 7 is out of bounds.*label"):
        influence(logreg).fit((logreg.X, y))
    inf = influence(logreg).fit(logreg.train)
    yt = logreg.test[1].clone()
    yt[4] = -5
    with pytest.raises(InputError, match="loss fails on example 4 "):
        inf.scores((logreg.test[0], yt))


@pytest.mark.parametrize("row", [0, 1])
def test_a_bad_label_among_the_first_two_examples_is_named_too(logreg, row):
    """The first two examples are checked together before any work; one failing alone is still named."""
    inf = influence(logreg).fit(logreg.train)
    yt = logreg.test[1].clone()
    yt[row] = 7
    with pytest.raises(InputError, match=f"loss fails on example {row} .*Target 7 is out of bounds"):
        inf.scores((logreg.test[0], yt))


def test_values_that_overflow_the_models_dtype_are_named_as_such(logreg):
    model = nn.Linear(5, 3)  # float32
    X = logreg.X.clone()
    X[5, 2] = 1e39  # finite as given (float64), inf in float32
    with pytest.raises(InputError, match="contains NaN or inf in 1 example.*overflow the model's float32 .*double"):
        infl.Influence(model, logreg.loss_fn, l2=logreg.l2).fit((X, logreg.y))
    X[5, 2] = float("nan")
    with pytest.raises(InputError, match="contains NaN or inf in 1 example.*clean or drop"):
        infl.Influence(model, logreg.loss_fn, l2=logreg.l2).fit((X, logreg.y))


def test_read_only_arrays_are_taken_without_a_warning(logreg):
    import warnings

    X, y = logreg.X.numpy().copy(), logreg.y.numpy().copy()
    X.flags.writeable = False  # as pandas hands out under copy-on-write
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S = influence(logreg).fit((X, y)).scores(logreg.test)
    torch.testing.assert_close(S, influence(logreg).fit(logreg.train).scores(logreg.test))


def test_a_parameter_the_loss_does_not_use_makes_the_curvature_singular_and_is_named(logreg):
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.extra = nn.Linear(5, 3).double(), nn.Parameter(torch.zeros(2, dtype=torch.float64))

        def forward(self, x):
            return self.lin(x)

    model = Unused()
    with torch.no_grad():
        model.lin.weight.copy_(logreg.model.weight)
        model.lin.bias.copy_(logreg.model.bias)
    for curvature in ("hessian", "gauss-newton"):
        with pytest.raises(CurvatureError, match=r"singular: .*zero to rounding.*2 entries of extra with rows of "
                                                 r"zeros.*Pass damping=") as error:
            infl.Influence(model, logreg.loss_fn, l2=0.0, curvature=curvature,
                           stationarity_tol=float("inf")).fit(logreg.train)
        advised = float(re.search(r"damping=([0-9.e+-]+)", str(error.value)).group(1))
        infl.Influence(model, logreg.loss_fn, l2=0.0, damping=advised, curvature=curvature,  # the advice works
                       stationarity_tol=float("inf")).fit(logreg.train)


def test_a_dict_of_arrays_is_refused_with_the_fix(logreg):
    with pytest.raises(InputError, match=r"got a dict with keys \['x', 'y'\]: pass \(data"):
        influence(logreg).fit({"x": logreg.X, "y": logreg.y})


def test_a_data_loader_or_a_list_of_examples_is_refused_with_the_fix(logreg):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(logreg.X, logreg.y), batch_size=8)
    with pytest.raises(InputError, match=r"got DataLoader: pass its dataset \(train_loader.dataset\)"):
        influence(logreg).fit(loader)
    with pytest.raises(InputError, match=r"sequence of length 3; for a list of \(x, y\) examples pass"):
        influence(logreg).fit([(logreg.X[i], logreg.y[i]) for i in range(3)])


def test_rows_are_named_by_their_place_in_the_users_data(logreg):
    """A shard's rows (distributed fit) are numbered from the shard's first row in the whole data set."""
    from infl.grads import iter_grads, sum_grad
    from infl.linear import make_objective

    obj = make_objective(logreg.model, logreg.loss_fn, logreg.l2, logreg.X[:2])
    y = logreg.y.clone()
    y[13] = 9
    for run in (lambda: list(iter_grads(obj, logreg.X, y, 5, first=40)), lambda: sum_grad(obj, logreg.X, y, 5, first=40)):
        with pytest.raises(InputError, match="loss fails on example 53 "):
            run()


def test_self_influence_samples_residuals_once_not_per_batch(logreg):
    """Batched solves of an approximate solver measure (and warn about) one sample of residuals, not one per batch."""
    import warnings

    inf = influence(logreg, solver=infl.Arnoldi(rank=3, check=4), batch_size=10).fit(logreg.train)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inf.self_influence()
    assert sum("relative residual" in str(w.message) for w in caught) <= 1
    residual = inf.info.residual
    assert residual.shape == (inf.n_train,) and int((~residual.isnan()).sum()) == 4 and inf.solver.check == 4


def test_warnings_point_at_the_callers_line_also_through_a_symlinked_install(tmp_path):
    """infl.errors.warn walks out of the package by file name; a symlinked path (macOS /tmp, a linked
    checkout) used to end the walk at once and point the warning inside the package."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(infl.__file__).resolve().parents[1]
    os.symlink(src, tmp_path / "linked")
    script = tmp_path / "user.py"
    script.write_text("import warnings, torch\nfrom infl.objective import Objective\nfrom infl.train import minimize\n"
                      "X, y = torch.randn(20, 3, dtype=torch.float64), torch.arange(20) % 2\n"
                      "obj = Objective(torch.nn.Linear(3, 2).double(), lambda o, t: torch.nn.functional.cross_entropy("
                      "o, t, reduction='none'), 0.1)\n"
                      "with warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
                      "    minimize(obj, X, y, max_iter=1)\n"
                      "print([(x.filename.rsplit('/', 1)[-1], x.lineno) for x in w])\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "linked")}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[('user.py', 8)]"


def test_the_command_line_shows_warnings_as_one_line_without_source(tmp_path):
    import click
    from click.testing import CliRunner

    from infl.cli import run_command
    from infl.errors import warn

    @click.command()
    def noisy() -> None:
        run_command(lambda opts: warn("LiSSA needs depth 9000"), {})

    result = CliRunner().invoke(noisy, [])
    assert result.exit_code == 0 and result.stderr == "warning: LiSSA needs depth 9000\n"


def _bce(out, t):
    return F.binary_cross_entropy_with_logits(out.squeeze(1), t, reduction="none")


def test_a_test_point_whose_loss_gradient_is_exactly_zero_is_named():
    """float32: a confidently right prediction (logit -17, target 0) has a loss gradient that torch.func rounds to 0
    (autograd does not): every score is 0 for it, a tie, and float64 keeps the gradient."""
    torch.manual_seed(0)
    X = torch.randn(20, 3)
    y = (X[:, 0] > 0).float()
    model = nn.Linear(3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[2.0, 0.5, -0.5]]))
        model.bias.zero_()
    test = (torch.tensor([[1.0, 0, 0], [-8.5, 0, 0]]), torch.tensor([1.0, 0.0]))
    with pytest.warns(UserWarning, match="stationary"):
        inf = infl.Influence(model, _bce, l2=0.1).fit((X, y))
    zero = r"exactly 0 for 1 test point\(s\) \(the first: \[1\]\).*not flat there: in float32.*compute in float64"
    with pytest.warns(UserWarning, match=zero):
        S = inf.scores(test)
    assert (S[1] == 0).all() and (S[0] != 0).any()
    import warnings
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        patch.setattr("infl.influence.rows_per_test_group", lambda *args: 1)  # a group per test point
        inf.scores((test[0].repeat(3, 1), test[1].repeat(3)))
    told = [str(w.message) for w in seen if "exactly 0" in str(w.message)]
    assert len(told) == 1 and "for 3 test point(s) (the first: [1, 3, 5])" in told[0]  # once, over every group


def test_the_exact_solver_warns_where_the_condition_number_outruns_the_precision():
    """float32, two nearly equal features, l2 = 1e-6: cond(H) ~ 3e5, so answers may be off by ~3% though every
    residual is at rounding; float64 has the digits."""
    torch.manual_seed(10)
    Z = torch.randn(100, 6, dtype=torch.float64)
    Z[:, 1] = Z[:, 0] + 1e-3 * torch.randn(100, dtype=torch.float64)
    y = (torch.rand(100, dtype=torch.float64) < torch.sigmoid(Z[:, 0] - Z[:, 2])).double()
    model = nn.Linear(6, 1).double()
    obj = infl.objective.Objective(model, _bce, 1e-6)
    infl.train.assign(model, obj, infl.train.minimize(obj, Z, y, tol=1e-12))
    with pytest.warns(UserWarning, match=r"condition number is about [0-9.]+e\+0[56], so in float32 the answers may be "
                                         r"off by up to about 0\.0\d.*Compute in float64"):
        infl.Influence(model.float(), _bce, l2=1e-6).fit((Z.float(), y.float()))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        infl.Influence(model.double(), _bce, l2=1e-6).fit((Z, y))  # cond x eps64 ~ 6e-11: nothing to say
    from infl.solvers.exact import condition_estimate
    A = torch.diag(torch.tensor([1e-3, 1.0, 2.0, 5.0], dtype=torch.float64))
    assert condition_estimate(torch.linalg.cholesky(A)) == pytest.approx(5e3, rel=1e-6)
