"""K-FAC / EK-FAC against the dense Gauss-Newton matrix on small float64 models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import infl
from infl.errors import InputError
from infl.operators import GaussNewton
from infl.solvers import cg
from infl.testing import dense_scores

from conftest import cross_entropy, make_blobs


class Scale(nn.Module):
    """An elementwise learned scale: a parameter outside any Linear / Conv2d layer."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.ones(d, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Conv2d(2, 2, 2, stride=2, bias=False),
                         nn.Tanh(), nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).double()


class Tokens(nn.Module):
    """A Linear applied at every position of a sequence (T = 4 locations), then pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.head = nn.Linear(3, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(x.view(-1, 4, 3))).mean(1))


def fitted(model: nn.Module, X, y, solver: str = "ekfac", l2: float = 0.1, **kw):
    inf = infl.Influence(model, cross_entropy, l2=l2, solver=solver, curvature="gauss-newton",
                         stationarity_tol=float("inf"), **kw)
    return inf.fit((X, y))


def kron_dense(solver) -> torch.Tensor:
    """The p x p matrix the solver inverts, from its forward product."""
    p = solver.op.p
    return solver.power(torch.eye(p, dtype=torch.float64), 1.0)


def data(n: int, d: int, seed: int):
    return make_blobs(n, d, 3, seed=seed)


@pytest.mark.parametrize("solver", ["kfac", "ekfac"])
def test_single_example_is_exact(solver):
    """With one example, the Gauss-Newton block of a Linear layer is exactly S (x) a a^T."""
    X, y = data(1, 4, seed=0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    inf = fitted(model, X, y, solver)
    G = GaussNewton(inf.objective_, X, y).to_dense()
    assert torch.allclose(kron_dense(inf.solver), G, atol=1e-12)
    B = torch.randn(3, G.shape[0], dtype=torch.float64)
    assert torch.allclose(inf.solver.solve(B)[0], torch.linalg.solve(G, B.T).T, atol=1e-10)


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double(),
                                  lambda: Tokens().double(), tiny_cnn], ids=["mlp", "sequence", "cnn"])
def test_ekfac_eigenvalues_are_the_exact_second_moments(make):
    """In EK-FAC's eigenbasis Q, diag(Q^T G_layer Q) of the dense Gauss-Newton matrix equals the fitted eigenvalues."""
    torch.manual_seed(0)
    model = make()
    d = 16 if isinstance(model, nn.Sequential) and isinstance(model[0], nn.Conv2d) else (12 if isinstance(model, Tokens) else 4)
    X, y = data(20, d, seed=1)
    if d == 16:
        X = X.view(20, 1, 4, 4)
    inf = fitted(model, X, y, "ekfac", l2=0.0, damping=0.1)
    G = GaussNewton(inf.objective_, X, y).to_dense()
    K = kron_dense(inf.solver)
    assert len(inf.solver.factors.layers) == len([m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))])
    for layer in inf.solver.factors.layers:
        idx = torch.cat([torch.arange(inf.objective_.p)[layer.weight]]
                        + ([torch.arange(inf.objective_.p)[layer.bias]] if layer.bias else []))
        Q_flat = _layer_basis(layer)  # columns: eigenvectors in the layer's flat order
        true = torch.einsum("pj,pq,qj->j", Q_flat, G[idx][:, idx], Q_flat)
        approx = torch.einsum("pj,pq,qj->j", Q_flat, K[idx][:, idx], Q_flat) - 0.1
        assert torch.allclose(approx, true, atol=1e-10, rtol=1e-8)
        assert torch.allclose(true, layer.lam.reshape(-1)[_flat_order(layer)], atol=1e-10, rtol=1e-8)


def _flat_order(layer) -> torch.Tensor:
    """Position in M = [W | b] (row-major) of each flat parameter (W row-major, then b)."""
    out, w = layer.out, layer.width - (layer.bias is not None)
    grid = torch.arange(out * layer.width).view(out, layer.width)
    order = [grid[:, :w].reshape(-1)]
    if layer.bias is not None:
        order.append(grid[:, w])
    return torch.cat(order)


def _layer_basis(layer) -> torch.Tensor:
    """The Kronecker eigenvectors Q_S (x) Q_A as columns, rows in the flat parameter order."""
    Q = torch.kron(layer.QS, layer.QA)  # rows and columns in M's row-major order
    return Q[_flat_order(layer)][:, _flat_order(layer)]


def test_ekfac_scores_track_exact_on_logistic_regression(logreg):
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2, solver="ekfac").fit(logreg.train)
    got = inf.scores(logreg.test)
    ref = dense_scores(logreg.model, logreg.loss_fn, logreg.train, logreg.test, logreg.l2)
    r = torch.corrcoef(torch.stack([got.reshape(-1), ref.reshape(-1)]))[0, 1]
    assert r > 0.95
    assert "relative residual" in inf.info.note and "1 layers" in inf.info.note


def test_kfac_is_worse_than_ekfac_where_factors_are_approximate(mlp):
    """EK-FAC's refitted eigenvalues fit the Gauss-Newton matrix at least as well as K-FAC's (Frobenius norm)."""
    errs = {}
    for name in ("kfac", "ekfac"):
        inf = fitted(mlp.model, mlp.X, mlp.y, name, l2=mlp.l2)
        G = GaussNewton(inf.objective_, mlp.X, mlp.y).to_dense()
        errs[name] = float((kron_dense(inf.solver) - G).norm())
    assert errs["ekfac"] <= errs["kfac"]


def test_other_parameters_get_the_exact_diagonal_and_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(Scale(4), nn.Linear(4, 3).double())
    X, y = data(15, 4, seed=2)
    with pytest.warns(UserWarning, match=r"0\.s"):
        inf = fitted(model, X, y, "ekfac")
    G = GaussNewton(inf.objective_, X, y).to_dense()
    K = kron_dense(inf.solver)
    assert torch.allclose(K.diagonal()[:4], G.diagonal()[:4], atol=1e-12)
    with pytest.raises(InputError, match=r"0\.s.*requires_grad=False"):
        fitted(model, X, y, infl.EKFAC(others="error"))


def test_layer_called_twice_is_not_factored():
    """A weight shared between two calls is not one Kronecker block: it falls back to the diagonal, named."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(torch.tanh(self.lin(x)))

    X, y = data(10, 3, seed=3)
    with pytest.warns(UserWarning, match="lin.weight"):
        inf = fitted(Twice().double(), X, y, "kfac")
    assert inf.solver.factors.layers == []


def test_a_weight_also_used_outside_its_layer_is_not_factored():
    """A tied decoder (F.linear with enc.weight.T) adds to enc.weight's gradient outside the enc call, so its
    Kronecker block would miss that part: enc falls back to the exact diagonal, named; the untied twin is
    factored, and its diagonal matches the dense Gauss-Newton's."""

    class AutoEncoder(nn.Module):
        def __init__(self, tied: bool) -> None:
            super().__init__()
            self.tied, self.enc, self.dec, self.out = tied, nn.Linear(5, 3, bias=False), nn.Linear(3, 5), nn.Linear(5, 3)

        def forward(self, x):
            h = torch.tanh(self.enc(x))
            return self.out(torch.tanh(F.linear(h, self.enc.weight.T) if self.tied else self.dec(h)))

    X, y = data(12, 5, seed=4)
    torch.manual_seed(0)
    model = AutoEncoder(tied=True).double()
    model.dec.requires_grad_(False)
    with pytest.warns(UserWarning, match=r"enc\.weight"):
        inf = fitted(model, X, y, "ekfac")
    assert [layer.name for layer in inf.solver.factors.layers] == ["out"]
    G = GaussNewton(inf.objective_, X, y).to_dense()
    torch.testing.assert_close(kron_dense(inf.solver).diagonal()[:15], G.diagonal()[:15], rtol=1e-10, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        untied = fitted(AutoEncoder(tied=False).double(), X, y, "ekfac")
    assert [layer.name for layer in untied.solver.factors.layers] == ["enc", "dec", "out"]


def test_valid_padding_is_factored_as_zero_padding_and_same_padding_falls_back_with_its_reason():
    X, y = data(6, 36, seed=6)

    def cnn(padding):
        torch.manual_seed(0)
        width = 2 * (36 if padding == "same" else 16)
        return nn.Sequential(nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 2, 3, padding=padding), nn.Tanh(),
                             nn.Flatten(), nn.Linear(width, 3)).double()

    fits = []
    for padding in (0, "valid"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            fits.append(fitted(cnn(padding), X, y, "ekfac"))
    assert [layer.name for layer in fits[1].solver.factors.layers] == ["1", "4"]
    for a, b in zip(*(inf.solver.factors.layers for inf in fits)):
        torch.testing.assert_close(a.lam, b.lam, rtol=1e-12, atol=1e-14)
    model = cnn("same")
    with pytest.warns(UserWarning, match=r"groups=1 and zero padding.*: 1\.weight"):
        fitted(model, X, y, "ekfac")


def test_a_layer_called_with_input_as_a_keyword_is_factored_as_by_position():
    """self.lin(input=x) is the same call as self.lin(x): the same factors, not an IndexError."""

    class Keyword(nn.Module):
        def __init__(self, keyword: bool) -> None:
            super().__init__()
            self.keyword, self.a, self.o = keyword, nn.Linear(4, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.tanh(self.a(input=x) if self.keyword else self.a(x))
            return self.o(input=h) if self.keyword else self.o(h)

    X, y = data(20, 4, seed=5)
    models = []
    for keyword in (False, True):
        torch.manual_seed(0)
        models.append(fitted(Keyword(keyword).double(), X, y, "ekfac"))
    for a, b in zip(*(inf.solver.factors.layers for inf in models)):
        assert a.name == b.name and torch.equal(a.lam, b.lam) and torch.equal(a.A, b.A)
    assert len(models[1].solver.factors.layers) == 2


def test_a_sequence_first_layer_is_not_factored_and_batch_size_changes_nothing():
    """A Linear fed (T, b, d) was factored as if T were the examples: its factors, and so the scores, changed
    with batch_size. It now gets the exact diagonal, named in the warning, and batch_size changes nothing."""

    class SequenceFirst(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mix, self.head = nn.Linear(3, 5), nn.Linear(5, 3)

        def forward(self, x):
            h = torch.tanh(self.mix(x.view(-1, 4, 3).transpose(0, 1)))  # (T, b, 5)
            return self.head(h.mean(0))

    torch.manual_seed(0)
    model = SequenceFirst().double()
    X, y = data(12, 12, seed=5)
    scores = []
    for batch_size in (3, 512):
        with pytest.warns(UserWarning, match=r"input batch-first.*mix\.weight"):
            inf = fitted(model, X, y, "kfac", batch_size=batch_size)
        assert [layer.name for layer in inf.solver.factors.layers] == ["head"]
        scores.append(inf.scores((X[:2], y[:2])))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["exact", "kfac"])
def test_a_layer_torch_func_cannot_batch_gets_the_cg_fix(solver):
    """nn.PReLU with several channels breaks PyTorch's nested vmap (a plain forward works): the per-example
    Jacobians and the exact diagonal failed with a bare shape error; CG, which needs products only, works."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.PReLU(3), nn.Flatten(), nn.Linear(27, 3)).double()
    X, y = torch.randn(8, 2, 5, 5, dtype=torch.float64), torch.arange(8) % 3
    with pytest.raises(InputError, match="failed inside the model.*solver='cg'"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # K-FAC first names the PReLU weight it leaves to the diagonal
        fitted(model, X, y, solver, damping=0.05)
    assert fitted(model, X, y, "cg", damping=0.05).scores((X[:2], y[:2])).isfinite().all()


def test_needs_a_data_backed_operator():
    from infl.operators import Dense

    with pytest.raises(InputError, match="model and data"):
        infl.EKFAC().fit(Dense(torch.eye(3, dtype=torch.float64)))
    with pytest.raises(InputError, match="others"):
        infl.EKFAC(others="drop")


def test_cg_with_kronecker_preconditioner_is_exact_and_faster(mlp):
    """EK-FAC as CG's preconditioner: the exact solve, in fewer iterations than plain CG."""
    X, y = mlp.X, mlp.y
    G = None
    iters = {}
    for name, solver in (("plain", infl.CG(tol=1e-10, rank=0)), ("ekfac", infl.CG(tol=1e-10, preconditioner="ekfac"))):
        inf = fitted(mlp.model, X, y, solver, l2=mlp.l2)
        G = GaussNewton(inf.objective_, X, y).to_dense() if G is None else G
        B = inf.test_grads(mlp.test)
        got = inf.solver.solve(B)
        assert torch.allclose(got[0], torch.linalg.solve(G, B.T).T, atol=1e-8, rtol=1e-6)
        iters[name] = got[1].iterations
    assert iters["ekfac"] < iters["plain"]
    assert "ekfac" in got[1].note
    with pytest.raises(InputError, match="preconditioner"):
        infl.CG(preconditioner="jacobi")


def test_ekfac_refined_by_cg_approaches_the_exact_solve(mlp):
    """EKFAC(refine=k): k steps of EK-FAC-preconditioned block CG on the true curvature G. Against the dense
    solve, the G-norm error falls with k, each row's is no worse than its own CG's after k steps (the block
    space holds every row's own Krylov space), and p steps are exact."""
    errors = []
    for k in (0, 1, 2, 3):
        inf = fitted(mlp.model, mlp.X, mlp.y, infl.EKFAC(refine=k), l2=mlp.l2)
        op = inf.solver.op
        G = GaussNewton(inf.objective_, mlp.X, mlp.y).to_dense()
        B = inf.test_grads(mlp.test)
        exact = torch.linalg.solve(G, B.T).T
        X, info = inf.solver.solve(B)
        g_norm = lambda E: ((E @ G) * E).sum(1)  # noqa: E731
        errors.append(float(g_norm(X - exact).sum()))
        if k:
            assert info.iterations == k or info.converged  # fewer steps only once the space is invariant
            assert info.residual.shape == (B.shape[0],)
            assert f"refined by {info.iterations} preconditioned block CG steps" in info.note
            precond = lambda R: inf.solver.power(R, -1.0, 1.0 + inf.solver.refine_damping)  # noqa: E731
            own, _ = cg(op.matmat, B, tol=1e-30, max_iter=k, precond=precond)
            assert (g_norm(X - exact) <= g_norm(own - exact) * (1 + 1e-9)).all()
    assert errors[0] > 1e-3 * float(((exact @ G) * exact).sum())  # the factored answer alone is approximate
    assert errors[3] < errors[2] < errors[1] <= errors[0]
    X, info = fitted(mlp.model, mlp.X, mlp.y, infl.EKFAC(refine=inf.objective_.p), l2=mlp.l2).solver.solve(B)
    assert info.converged and torch.allclose(X, exact, atol=1e-8, rtol=1e-6)
    for bad in (-1, True, 2.0):
        with pytest.raises(InputError, match="refine must be an integer"):
            infl.EKFAC(refine=bad)
    assert infl.EKFAC(refine=np.int64(2)).refine == 2 and infl.Arnoldi(refine=np.int32(3)).refine == 3


def test_refined_ekfac_refuses_an_indefinite_hessian_even_where_its_steps_miss_it(mlp, monkeypatch):
    """A few block CG steps need not meet the negative curvature of an indefinite Hessian and would answer; with
    refine, EK-FAC estimates the smallest eigenvalue first (not where l2 + damping bounds it: Gauss-Newton)."""
    import re

    from infl.errors import CurvatureError
    from infl.solvers import kfac

    with torch.no_grad():  # a saddle region: far from the optimum, no l2
        for p in mlp.model.parameters():
            p.mul_(8.0)
    kw = dict(l2=0.0, damping=1e-3, stationarity_tol=float("inf"))
    with pytest.raises(CurvatureError, match=r"EKFAC\(refine=2\): .*eigenvalue of about -.*not positive definite.*"
                                             r"damping > ") as error:
        infl.Influence(mlp.model, mlp.loss_fn, solver=infl.EKFAC(refine=2), **kw).fit(mlp.train)
    advised = 1.5 * float(re.search(r"damping > ([0-9.e+-]+)", str(error.value)).group(1))
    infl.Influence(mlp.model, mlp.loss_fn, solver=infl.EKFAC(refine=2), **{**kw, "damping": advised}).fit(mlp.train)
    monkeypatch.setattr(kfac, "smallest_eigenvalue", lambda *a, **k: pytest.fail("estimated a known floor"))

    class Pair(nn.Module):  # a tuple-returning model is refused before the estimate (it would be wasted)
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp.model

        def forward(self, x):
            return self.net(x), x

    with pytest.raises(InputError, match="returns a tuple"):
        infl.Influence(Pair(), lambda out, y: mlp.loss_fn(out[0], y), solver=infl.EKFAC(refine=2), **kw).fit(mlp.train)
    infl.Influence(mlp.model, mlp.loss_fn, solver=infl.EKFAC(refine=2), curvature="gauss-newton",
                   **{**kw, "l2": 1e-3}).fit(mlp.train)


def test_refine_damping_raises_only_the_preconditioners_damping(mlp):
    """refine_damping scales the damping of the refinement's preconditioner, not the system: a huge one makes
    the preconditioner a multiple of I, so the answer is plain block CG's (Krylov spaces are scale-free), and
    the factored answer without refinement is unchanged. Bad values are refused."""
    from infl.solvers.krylov import refine

    inf = fitted(mlp.model, mlp.X, mlp.y, infl.EKFAC(refine=1, refine_damping=1e12), l2=mlp.l2)
    B = inf.test_grads(mlp.test)
    X, info = inf.solver.solve(B)
    plain, _ = refine(inf.solver.op, B, 1, lambda R: R.clone(), "cg", "")
    assert info.max_residual > 0.1  # one step: far from converged, so the spaces must match
    torch.testing.assert_close(X, plain, rtol=1e-4, atol=1e-7)  # its directions come from a float32 preconditioner
    direct = [fitted(mlp.model, mlp.X, mlp.y, infl.EKFAC(refine_damping=d), l2=mlp.l2).solver.solve(B)[0]
              for d in (0.0, 5.0)]
    torch.testing.assert_close(direct[0], direct[1], rtol=0, atol=0)
    for bad in (-1.0, float("nan"), True, "2"):
        with pytest.raises(InputError, match="refine_damping"):
            infl.EKFAC(refine_damping=bad)


def test_the_preconditioner_runs_in_float32_only_where_its_eigenvalues_stand_clear_of_float32_rounding(mlp):
    """Applied in float32, a factored inverse with eigenvalues below ~1e-7 of its largest is rounding noise there:
    at l2 = 1e-9 it stays float64; at the fixture's l2 it runs in float32, and so do the steps' products."""
    seen = []
    for l2, low in ((mlp.l2, True), (1e-9, False)):
        inf = fitted(mlp.model, mlp.X, mlp.y, infl.EKFAC(refine=3), l2=l2)
        assert inf.solver.float32_ is low
        assert (inf.solver.low_ is not None and inf.solver.low_.dtype == torch.float32) is low
        power = inf.solver.power
        inf.solver.power = lambda B, *a: seen.append(B.dtype) or power(B, *a)
        assert inf.s_test(mlp.test).dtype == torch.float64
        assert set(seen) == {torch.float32 if low else torch.float64}
        seen.clear()


def test_refined_ekfac_with_float32_steps_is_as_accurate_as_with_float64_steps(mlp):
    """EKFAC(refine=1) on a float64 MLP takes its step's products in float32 and checks them in float64: each
    answer's error in the curvature norm (what block CG minimises) is the float64 step's to 1%. Where l2 does
    not bound the curvature (the Hessian), no float32 form is taken for the steps."""
    inf = fitted(mlp.model, mlp.X, mlp.y, infl.EKFAC(refine=1), l2=mlp.l2)  # more steps solve this small model
    G = GaussNewton(inf.objective_, mlp.X, mlp.y).to_dense()
    B = inf.test_grads(mlp.test)
    exact = torch.linalg.solve(G, B.T).T
    X, info = inf.solver.solve(B)
    inf.solver.low_ = None
    Y, _ = inf.solver.solve(B)
    assert "float32 products, the answers checked in float64)" in info.note
    error = lambda D: ((D @ G) * D).sum(1).sqrt()  # noqa: E731
    assert (error(X - exact) <= 1.01 * error(Y - exact)).all() and not torch.equal(X, Y)
    hessian = infl.Influence(mlp.model, cross_entropy, l2=mlp.l2, solver=infl.EKFAC(refine=3), damping=1.0,
                             stationarity_tol=float("inf")).fit((mlp.X, mlp.y))
    assert hessian.solver.low_ is None


def test_zero_factored_eigenvalue_without_damping_is_refused(logreg):
    """Softmax outputs have a null direction, so without l2 or damping EK-FAC has a zero eigenvalue: say so."""
    with pytest.raises(infl.CurvatureError, match="damping"):
        infl.Influence(logreg.model, logreg.loss_fn, l2=0.0, solver="ekfac",
                       stationarity_tol=float("inf")).fit(logreg.train)


def test_a_float32_model_with_small_l2_is_not_refused_as_singular():
    """The singularity bound was eps * p * the largest eigenvalue: a float32 Linear(200, 10) at l2 = 1e-4
    (eigenvalues 1e-4 .. 6.7, inverted one by one without trouble) was refused; EK-FAC now solves it."""
    torch.manual_seed(0)
    X, y = torch.rand(300, 200), torch.randint(0, 10, (300,))
    model = nn.Linear(200, 10)
    kw = dict(l2=1e-4, curvature="gauss-newton", stationarity_tol=float("inf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EK-FAC's approximation warning
        S = infl.Influence(model, cross_entropy, solver=infl.EKFAC(refine=4), **kw).fit((X, y)).scores((X[:5], y[:5]))
    model64 = nn.Linear(200, 10).double()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    ref = infl.Influence(model64, cross_entropy, solver="exact", **kw).fit((X.double(), y)) \
        .scores((X[:5].double(), y[:5]))
    assert S.dtype == torch.float32 and np.corrcoef(S.double().ravel(), ref.ravel())[0, 1] > 0.999
