"""Batch size, data order, self-influence as the pairwise diagonal, dtype, and an untouched model."""

import copy
import warnings

import pytest
import torch
import torch.nn.utils.parametrize

import infl


def fit(problem, **kw):
    return infl.Influence(problem.model, problem.loss_fn, l2=problem.l2, **kw).fit(problem.train)


def test_scores_do_not_depend_on_batch_size(mlp):
    a = fit(mlp, batch_size=7).scores(mlp.test)
    b = fit(mlp, batch_size=1000).scores(mlp.test)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", ["exact", "cg", "ekfac", "arnoldi", "ekfac-refine", "arnoldi-refine"])
def test_scores_and_s_test_do_not_depend_on_test_grouping(mlp, solver, monkeypatch):
    """Test points are solved in groups when m x p is large (each group one pass over the training gradients);
    groups of 2 give the one-group answers, also for a refined solver's block CG (groups are multiples of its
    blocks, here 2), and inf.info reports on all (an approximate solver's check made on the first group)."""
    monkeypatch.setattr("infl.solvers.krylov.REFINE_BLOCK", 2)
    make = {"ekfac-refine": lambda: infl.EKFAC(refine=2), "arnoldi-refine": lambda: infl.Arnoldi(rank=10, refine=2),
            "arnoldi": lambda: infl.Arnoldi(rank=30)}.get(solver, lambda: solver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the approximate solvers' warnings
        whole = fit(mlp, solver=make(), batch_size=3)
        S, T, m = whole.scores(mlp.test), whole.s_test(mlp.test), mlp.test[0].shape[0]
        info = whole.info
        assert m > 4
        monkeypatch.setattr("infl.influence.TEST_GROUP_BYTES", 1)
        grouped = fit(mlp, solver=make(), batch_size=3)
        assert [g.stop - g.start for g in grouped._test_groups(m)][:-1] == [2] * (-(-m // 2) - 1)
        torch.testing.assert_close(grouped.scores(mlp.test), S, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grouped.s_test(mlp.test), T, rtol=1e-10, atol=1e-12)
    assert grouped.info.residual.shape == (m,) and torch.isfinite(grouped.info.residual[:2]).all()
    assert grouped.info.converged == info.converged and grouped.info.note.split(";")[0] == info.note.split(";")[0]
    if "refine" in solver:  # every group measured: the note adds the worst over all of them
        worst = float(grouped.info.residual[~grouped.info.residual.isnan()].max())
        note = grouped.info.note
        assert f"over all {-(-m // 2)} measured batches" in note and f"max {worst:.3g}" in note


def test_test_groups_fit_their_memory_and_round_down_to_refine_blocks():
    from infl.influence import rows_per_test_group

    assert rows_per_test_group(7850, 8, 512) == 2816  # 2,849 fit 1 GiB, rounded down to a multiple of 128
    assert rows_per_test_group(101770, 4, 512) == 512  # 439 fit: batch_size, a multiple of 128
    assert rows_per_test_group(10**8, 4, 1) == 1  # a huge model: one point (was rounded up to 128: 300 GB)
    assert rows_per_test_group(10**8, 4, 200) == 128


def test_scores_permute_with_the_training_set(logreg):
    perm = torch.randperm(logreg.X.shape[0], generator=torch.Generator().manual_seed(0))
    a = fit(logreg).scores(logreg.test)
    b = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit((logreg.X[perm], logreg.y[perm])).scores(logreg.test)
    torch.testing.assert_close(b, a[:, perm], rtol=1e-9, atol=1e-12)


def test_self_influence_is_the_diagonal_of_pairwise_scores(mlp, capsys):
    for solver in ("exact", "cg"):
        inf = fit(mlp, solver=solver, batch_size=16)
        torch.testing.assert_close(inf.self_influence(), torch.diagonal(inf.scores(mlp.train)), rtol=1e-6, atol=1e-9)
    assert capsys.readouterr().err == ""  # quiet unless asked
    n = mlp.train[0].shape[0]
    torch.testing.assert_close(inf.self_influence(progress=True), inf.self_influence())
    err = capsys.readouterr().err
    assert "self-influence: 100%" in err and f"{n}/{n}" in err


def test_kept_gradients_give_the_same_scores(logreg):
    torch.testing.assert_close(fit(logreg, keep_train_grads=True).scores(logreg.test), fit(logreg).scores(logreg.test))


def test_float64_in_float64_out_and_float32_in_float32_out(logreg):
    assert fit(logreg).scores(logreg.test).dtype == torch.float64
    model32 = copy.deepcopy(logreg.model).float()
    S = infl.Influence(model32, logreg.loss_fn, l2=logreg.l2, stationarity_tol=1e-2).fit(logreg.train).scores(logreg.test)
    assert S.dtype == torch.float32
    torch.testing.assert_close(S.double(), fit(logreg).scores(logreg.test), rtol=1e-3, atol=1e-4)


def test_model_is_left_exactly_as_it_was(mlp):
    model = mlp.model.train()  # no dropout/batch norm: training mode is allowed, and must stay set
    before = copy.deepcopy(model.state_dict())
    inf = fit(mlp, solver="cg")
    inf.scores(mlp.test), inf.self_influence(), inf.up_params([0]), inf.pert_loss(mlp.test, [1])
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_accepts_numpy_arrays_and_datasets(logreg):
    ref = fit(logreg).scores(logreg.test)
    from_numpy = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit((logreg.X.numpy(), logreg.y.numpy()))
    torch.testing.assert_close(from_numpy.scores((logreg.Xt.numpy(), logreg.yt.numpy())), ref)
    dataset = torch.utils.data.TensorDataset(logreg.X, logreg.y)
    torch.testing.assert_close(infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(dataset).scores(logreg.test), ref)


def test_hooked_paths_leave_the_model_as_it_was(logreg):
    """The closed-form path reads features through a hook; it must be gone afterwards, also after an error."""
    body = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh()).double().requires_grad_(False)
    model = torch.nn.Sequential(body, torch.nn.Linear(4, 3).double())
    inf = infl.Influence(model, logreg.loss_fn, l2=0.05, stationarity_tol=float("inf")).fit(logreg.train)
    inf.scores(logreg.test)
    try:
        inf.scores((logreg.Xt[:, :4], logreg.yt))
    except infl.InputError:
        pass
    assert all(not m._forward_hooks for m in model.modules())


def _reused_and_tied():
    """A model that calls one Linear twice, and its head whose weight is also a second module's (tied); and the
    same function written out by hand over theta = (W, b, V, c), the reference."""
    torch.manual_seed(3)
    inner, head = torch.nn.Linear(3, 3).double(), torch.nn.Linear(3, 3).double()
    twin = torch.nn.Linear(3, 3).double()
    twin.weight = head.weight  # a Parameter registered in two modules

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(inner, torch.nn.Tanh(), inner, torch.nn.Tanh())
            self.head, self.twin = head, twin

        def forward(self, x):
            h = self.body(x)
            return self.head(h) + 0.5 * self.twin(torch.tanh(h))

    def by_hand(theta, x):
        W, b, V, c, d = theta[:9].view(3, 3), theta[9:12], theta[12:21].view(3, 3), theta[21:24], theta[24:27]
        h = torch.tanh(torch.tanh(x @ W.T + b) @ W.T + b)
        return h @ V.T + c + 0.5 * (torch.tanh(h) @ V.T + d)

    return Model(), by_hand


def test_a_reused_or_tied_module_is_differentiated_once_and_left_a_parameter():
    """functional_call swapped a module reached by two names twice and left plain tensors in the model (training
    it then failed: 'can't optimize a non-leaf Tensor'), and EK-FAC's layer search then raised a bare KeyError."""
    import torch.nn.functional as F
    from torch.func import grad, vmap

    model, by_hand = _reused_and_tied()
    params = list(model.parameters())
    X, y = torch.randn(30, 3, dtype=torch.float64), torch.arange(30) % 3
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    assert theta.numel() == 27  # body's W, b; head's V, c; twin's bias d
    loss = lambda th, x, t: F.cross_entropy(by_hand(th, x), t, reduction="none")  # noqa: E731
    l2, damping = 0.05, 3.0  # an untrained model: its Hessian is indefinite
    H = torch.autograd.functional.hessian(lambda th: loss(th, X, y).mean() + 0.5 * l2 * th.square().sum(), theta)
    G = vmap(grad(lambda th, x, t: loss(th, x[None], t[None])[0]), in_dims=(None, 0, 0))(theta, X, y)
    reference = -G[:4] @ torch.linalg.solve(H + damping * torch.eye(27, dtype=H.dtype), G.T)
    ce = lambda out, t: F.cross_entropy(out, t, reduction="none")  # noqa: E731
    for solver in ("exact", "cg"):
        inf = infl.Influence(model, ce, l2=l2, damping=damping, solver=solver, stationarity_tol=float("inf"))
        torch.testing.assert_close(inf.fit((X, y)).scores((X[:4], y[:4])), reference, rtol=1e-6, atol=1e-8)
        assert [type(p) for p in model.parameters()] == [torch.nn.Parameter] * 5
        assert all(p is q for p, q in zip(model.parameters(), params)) and model.twin.weight is model.head.weight
    torch.optim.SGD(model.parameters(), lr=0.1)  # still trainable
    with pytest.warns(UserWarning, match="not in a factorable layer .*body.0.weight, body.0.bias"):
        infl.Influence(model, ce, l2=l2, damping=damping, solver="ekfac", stationarity_tol=float("inf")).fit((X, y))


def test_an_embeddings_padding_row_is_a_constant_in_every_product():
    """PyTorch gives nn.Embedding's padding row gradient 0 in reverse mode but not in forward mode, so
    forward-over-reverse products were not symmetric: the exact solver reported a negative eigenvalue of a
    positive definite Hessian (and its advised damping gave scores 18% off), CG on Gauss-Newton diverged. The
    padding row is a constant of the model (it never trains): the reference differentiates the others only."""
    import torch.nn.functional as F
    from torch.func import grad, vmap

    torch.manual_seed(0)
    emb = torch.nn.Embedding(6, 3, padding_idx=0).double()
    model = torch.nn.Sequential(emb, torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(12, 2).double())
    X, y = torch.randint(0, 6, (40, 4)), torch.arange(40) % 2
    ce = lambda out, t: F.cross_entropy(out, t, reduction="none")  # noqa: E731
    l2, damping = 0.05, 0.2
    pad = emb.weight.detach()[0]
    rest = torch.cat([emb.weight.detach()[1:].reshape(-1)] + [p.detach().reshape(-1) for p in model[3].parameters()])

    def loss(theta, tokens, t):  # the model with the padding row held constant, over the other 15 + 26 numbers
        E = torch.cat([pad[None], theta[:15].view(5, 3)])
        W, b = theta[15:39].view(2, 12), theta[39:41]
        return ce(torch.tanh(E[tokens]).flatten(1) @ W.T + b, t)

    H = torch.autograd.functional.hessian(lambda th: loss(th, X, y).mean() + 0.5 * l2 * th.square().sum(), rest)
    G = vmap(grad(lambda th, x, t: loss(th, x[None], t[None])[0]), in_dims=(None, 0, 0))(rest, X, y)
    H += damping * torch.eye(41, dtype=H.dtype)  # an untrained model: its Hessian is indefinite
    reference = -G[:3] @ torch.linalg.solve(H, G.T)
    assert torch.linalg.eigvalsh(H)[0] > 0
    for curvature, solver in (("hessian", "exact"), ("hessian", "cg"), ("gauss-newton", "cg")):
        inf = infl.Influence(model, ce, l2=l2, damping=damping, curvature=curvature, solver=solver,
                             stationarity_tol=float("inf"))
        S = inf.fit((X, y)).scores((X[:3], y[:3]))
        if curvature == "hessian":
            torch.testing.assert_close(S, reference, rtol=1e-6, atol=1e-8)
        assert inf.s_test((X[:3], y[:3]))[:, :3].abs().max() < 1e-10  # the padding row's entries
    exact = infl.Influence(model, ce, l2=l2, damping=damping, curvature="gauss-newton", solver="exact",
                           stationarity_tol=float("inf"))
    torch.testing.assert_close(S, exact.fit((X, y)).scores((X[:3], y[:3])), rtol=1e-6, atol=1e-8)
    with pytest.raises(infl.InputError, match="scale_grad_by_freq=True"):
        infl.Influence(torch.nn.Sequential(torch.nn.Embedding(6, 3, scale_grad_by_freq=True), torch.nn.Flatten(),
                                           torch.nn.Linear(12, 2)), ce).fit((X, y))
    scaled = torch.nn.Embedding(6, 3, padding_idx=0)  # its weight computed from another: the row cannot be held
    torch.nn.utils.parametrize.register_parametrization(scaled, "weight", _Double())
    with pytest.raises(infl.InputError, match="padding_idx under a parametrization"):
        infl.Influence(torch.nn.Sequential(scaled, torch.nn.Flatten(), torch.nn.Linear(12, 2)), ce).fit((X, y))


class _Double(torch.nn.Module):
    def forward(self, w):
        return 2 * w


def test_a_padding_row_tied_to_an_output_layer_trains_there():
    """A language model's embedding tied to its output layer: the padding row is a constant in the lookup only and
    a parameter of the output layer. Zeroing it in every tangent (the first fix) mixed two functions (6% off)."""
    import torch.nn.functional as F
    from torch.func import grad, vmap

    torch.manual_seed(1)
    emb, out = torch.nn.Embedding(6, 3, padding_idx=0).double(), torch.nn.Linear(3, 6).double()
    out.weight = emb.weight

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.out = emb, out

        def forward(self, x):
            return self.out(torch.tanh(self.emb(x)).mean(1))

    X, y = torch.randint(0, 6, (40, 4)), torch.arange(40) % 6
    ce = lambda o, t: F.cross_entropy(o, t, reduction="none")  # noqa: E731
    l2, damping = 0.05, 1.0
    E0 = emb.weight.detach()
    theta = torch.cat([E0.reshape(-1), out.bias.detach()])

    def loss(th, tokens, t):
        E, c = th[:18].view(6, 3), th[18:]
        lookup = torch.cat([E0[:1], E[1:]])  # the padding row a constant here only
        return ce(torch.tanh(lookup[tokens]).mean(1) @ E.T + c, t)

    H = torch.autograd.functional.hessian(lambda th: loss(th, X, y).mean() + 0.5 * l2 * th.square().sum(), theta)
    G = vmap(grad(lambda th, x, t: loss(th, x[None], t[None])[0]), in_dims=(None, 0, 0))(theta, X, y)
    reference = -G[:3] @ torch.linalg.solve(H + damping * torch.eye(24, dtype=H.dtype), G.T)
    for solver in ("exact", "cg"):
        inf = infl.Influence(Tied(), ce, l2=l2, damping=damping, solver=solver, stationarity_tol=float("inf"))
        torch.testing.assert_close(inf.fit((X, y)).scores((X[:3], y[:3])), reference, rtol=1e-6, atol=1e-8)


def test_a_layer_without_forward_mode_is_refused_with_the_way_that_works():
    """nn.EmbeddingBag has no forward-mode AD. The refusal advised solver='ekfac' too, whose residual check takes
    curvature products and then failed with a bare NotImplementedError at the first query."""
    import torch.nn.functional as F

    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.EmbeddingBag(6, 3, mode="mean"), torch.nn.Linear(3, 2)).double()
    X, y = torch.randint(0, 6, (30, 4)), torch.arange(30) % 2
    ce = lambda o, t: F.cross_entropy(o, t, reduction="none")  # noqa: E731
    advice = r"(?s)lacks .*use curvature='gauss-newton' with solver='exact' \(the other solvers"
    with pytest.raises(infl.InputError, match=advice):
        infl.Influence(model, ce, l2=0.1, solver="cg", stationarity_tol=float("inf")).fit((X, y))
    ekfac = infl.Influence(model, ce, l2=0.1, curvature="gauss-newton", solver="ekfac", stationarity_tol=float("inf"))
    with pytest.raises(infl.InputError, match=advice), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ekfac.fit((X, y)).scores((X[:2], y[:2]))
    exact = infl.Influence(model, ce, l2=0.1, curvature="gauss-newton", solver="exact", stationarity_tol=float("inf"))
    assert exact.fit((X, y)).scores((X[:2], y[:2])).shape == (2, 30)
