"""Batch size, data order, self-influence as the pairwise diagonal, dtype, and an untouched model."""

import copy

import torch

import infl


def fit(problem, **kw):
    return infl.Influence(problem.model, problem.loss_fn, l2=problem.l2, **kw).fit(problem.train)


def test_scores_do_not_depend_on_batch_size(mlp):
    a = fit(mlp, batch_size=7).scores(mlp.test)
    b = fit(mlp, batch_size=1000).scores(mlp.test)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_scores_permute_with_the_training_set(logreg):
    perm = torch.randperm(logreg.X.shape[0], generator=torch.Generator().manual_seed(0))
    a = fit(logreg).scores(logreg.test)
    b = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit((logreg.X[perm], logreg.y[perm])).scores(logreg.test)
    torch.testing.assert_close(b, a[:, perm], rtol=1e-9, atol=1e-12)


def test_self_influence_is_the_diagonal_of_pairwise_scores(mlp):
    for solver in ("exact", "cg"):
        inf = fit(mlp, solver=solver, batch_size=16)
        torch.testing.assert_close(inf.self_influence(), torch.diagonal(inf.scores(mlp.train)), rtol=1e-6, atol=1e-9)


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
