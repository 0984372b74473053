"""Gradients, Hessian-vector products, I_up,params and I_pert,loss against finite differences."""

import pytest
import torch

import infl
import infl.influence
from infl.grads import directional_pays
from infl.linear import LinearObjective, curvature_operator, make_objective
from infl.objective import Objective
from infl.operators import Hessian
from infl.train import minimize


def central_difference(f, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """d f / d x by central differences, f: tensor -> tensor; result shaped f(x).shape + x.shape."""
    flat = x.reshape(-1)
    cols = []
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = h
        cols.append((f((flat + e).view_as(x)) - f((flat - e).view_as(x))) / (2 * h))
    return torch.stack(cols, dim=-1).reshape(*f(x).shape, *x.shape)


def test_per_example_grads_match_finite_differences(mlp):
    obj = Objective(mlp.model, mlp.loss_fn, mlp.l2)
    G = obj.per_example_grads(mlp.X[:5], mlp.y[:5])
    fd = central_difference(lambda t: obj.losses(t, mlp.X[:5], mlp.y[:5]), obj.theta)
    torch.testing.assert_close(G, fd, rtol=1e-6, atol=1e-8)


def test_hvp_matches_finite_difference_of_gradients(mlp):
    obj = Objective(mlp.model, mlp.loss_fn, mlp.l2)
    op = Hessian(obj, mlp.X, mlp.y, batch_size=13)
    v = torch.randn(1, obj.p, dtype=torch.float64)

    def risk_grad(theta):
        return torch.func.grad(lambda t: obj.losses(t, mlp.X, mlp.y).mean() + 0.5 * mlp.l2 * t.square().sum())(theta)

    h = 1e-5
    fd = (risk_grad(obj.theta + h * v[0]) - risk_grad(obj.theta - h * v[0])) / (2 * h)
    torch.testing.assert_close(op.matmat(v)[0], fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_closed_forms_equal_generic_autodiff(logreg, bias):
    model = torch.nn.Linear(5, 3, bias=bias).double()
    fast = make_objective(model, logreg.loss_fn, 0.05, logreg.X[:2])
    slow = Objective(model, logreg.loss_fn, 0.05)
    assert isinstance(fast, LinearObjective)
    torch.testing.assert_close(fast.per_example_grads(logreg.X, logreg.y), slow.per_example_grads(logreg.X, logreg.y))
    Hf = curvature_operator(fast, logreg.X, logreg.y, 17)
    Hs = Hessian(slow, logreg.X, logreg.y, 17)
    torch.testing.assert_close(Hf.to_dense(), Hs.to_dense(), rtol=1e-10, atol=1e-12)
    V = torch.randn(3, slow.p, dtype=torch.float64)
    torch.testing.assert_close(Hf.matmat(V), Hs.matmat(V), rtol=1e-10, atol=1e-12)


def test_directional_grads_are_rows_times_per_example_grads(mlp, logreg):
    """t . grad L(z_i) by forward mode (generic) and by the linear closed form (with and without bias, and
    behind frozen features) equals T @ G^T from the per-example gradients."""
    frozen = torch.nn.Sequential(torch.nn.Linear(5, 4).double().requires_grad_(False), torch.nn.Tanh(),
                                 torch.nn.Linear(4, 3).double())
    cases = [(Objective(mlp.model, mlp.loss_fn, mlp.l2), mlp.X, mlp.y)]
    for model in (torch.nn.Linear(5, 3).double(), torch.nn.Linear(5, 3, bias=False).double(), frozen):
        fast = make_objective(model, logreg.loss_fn, 0.05, logreg.X[:2])
        assert isinstance(fast, LinearObjective)
        cases.append((fast, logreg.X, logreg.y))
    for obj, X, y in cases:
        T = torch.randn(11, obj.p, dtype=torch.float64)  # more rows than features: the closed form's chunks
        torch.testing.assert_close(obj.directional_grads(T, X, y), T @ obj.per_example_grads(X, y).T,
                                   rtol=1e-10, atol=1e-12)


def test_scores_take_forward_mode_only_where_it_pays(mlp, monkeypatch):
    """Dense layers with few test rows: forward mode (gradients are never formed); many rows (their tangents
    would outweigh one gradient), a convolution (weights reused over positions) or an operation without
    forward-mode AD: per-example gradients (forward mode never runs). Scores are the same either way."""
    torch.manual_seed(0)
    X, y = torch.randn(50, 40, dtype=torch.float64), torch.randint(0, 3, (50,))
    dense = torch.nn.Sequential(torch.nn.Linear(40, 30), torch.nn.Tanh(), torch.nn.Linear(30, 3)).double()
    obj = Objective(dense, mlp.loss_fn, 0.1)  # p = 1,323; about 70 numbers written per example
    assert directional_pays(obj, X, y, 8)
    assert not directional_pays(obj, X, y, 64)
    conv = torch.nn.Sequential(torch.nn.Unflatten(1, (1, 2, 2)), torch.nn.Conv2d(1, 16, 1, padding=4),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 3)).double()
    assert not directional_pays(Objective(conv, mlp.loss_fn, mlp.l2), mlp.X, mlp.y, 1)

    class NoForwardMode(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return torch.tanh(x)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(output)

        @staticmethod
        def backward(ctx, g):
            return g * (1 - ctx.saved_tensors[0] ** 2)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = dense[0], dense[2]

        def forward(self, x):
            return self.b(NoForwardMode.apply(self.a(x)))

    assert not directional_pays(Objective(Net(), mlp.loss_fn, 0.1), X, y, 1)

    def refuse(*args):
        raise AssertionError("this path must not run")

    kw = dict(l2=0.1, curvature="gauss-newton", stationarity_tol=float("inf"))
    inf = infl.Influence(dense, mlp.loss_fn, **kw).fit((X, y))
    kept = infl.Influence(dense, mlp.loss_fn, keep_train_grads=True, **kw).fit((X, y))
    few, many = (X[:8], y[:8]), (X.repeat(2, 1)[:64], y.repeat(2)[:64])
    with monkeypatch.context() as m:
        m.setattr(infl.influence, "iter_grads", refuse)  # the training gradients
        torch.testing.assert_close(inf.scores(few), kept.scores(few), rtol=1e-10, atol=1e-12)
    with monkeypatch.context() as m:
        m.setattr(infl.influence, "iter_directional", refuse)
        torch.testing.assert_close(inf.scores(many), kept.scores(many), rtol=1e-10, atol=1e-12)


def test_frozen_features_with_linear_head_use_closed_form(logreg):
    body = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh()).double().requires_grad_(False)
    model = torch.nn.Sequential(body, torch.nn.Linear(4, 3).double())
    fast = make_objective(model, logreg.loss_fn, 0.05, logreg.X[:2])
    assert isinstance(fast, LinearObjective)
    slow = Objective(model, logreg.loss_fn, 0.05)
    torch.testing.assert_close(curvature_operator(fast, logreg.X, logreg.y, 32).to_dense(),
                               Hessian(slow, logreg.X, logreg.y, 32).to_dense(), rtol=1e-10, atol=1e-12)


def test_up_params_is_derivative_of_weighted_optimum(logreg):
    """I_up,params(z_j) = d theta_eps / d eps at eps = 0, theta_eps = argmin R + eps L(z_j)."""
    inf = infl.Influence(logreg.model, logreg.loss_fn, l2=logreg.l2).fit(logreg.train)
    j, n, eps = 7, logreg.X.shape[0], 1e-3
    obj = inf.objective_

    def optimum(e):
        w = torch.full((n,), 1.0 / n, dtype=torch.float64)
        w[j] += e
        return minimize(obj, logreg.X, logreg.y, weights=w, tol=1e-12, max_iter=500)

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fd = (optimum(eps) - optimum(-eps)) / (2 * eps)
    torch.testing.assert_close(inf.up_params([j])[0], fd, rtol=2e-3, atol=1e-6)


def test_pert_loss_matches_finite_differences_in_x(mlp):
    inf = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2).fit(mlp.train)
    test = (mlp.Xt[:2], mlp.yt[:2])
    P = inf.pert_loss(test, [3, 11])
    assert P.shape == (2, 2, 4)
    T = inf.s_test(test)
    obj = inf.objective_
    for k, i in enumerate([3, 11]):
        def score(x):
            g = obj.per_example_grads(x[None], mlp.y[i:i + 1])[0]
            return -(T @ g)
        fd = central_difference(score, mlp.X[i].clone())
        torch.testing.assert_close(P[:, k], fd, rtol=1e-5, atol=1e-7)


def test_pert_loss_takes_training_points_batch_size_at_a_time(mlp):
    """Memory is bounded by batch_size examples: no call sees more rows, and the answer does not change."""
    whole = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2).fit(mlp.train)
    test, rows = (mlp.Xt[:3], mlp.yt[:3]), list(range(7))
    chunked = infl.Influence(mlp.model, mlp.loss_fn, l2=mlp.l2, batch_size=2).fit(mlp.train)
    seen = []
    original = chunked.objective_.input_grads
    chunked.objective_.input_grads = lambda X, y, t: seen.append(X.shape[0]) or original(X, y, t)
    torch.testing.assert_close(chunked.pert_loss(test, rows), whole.pert_loss(test, rows), rtol=1e-10, atol=1e-12)
    assert max(seen) == 2 and sum(seen) == 3 * 7


def test_a_head_called_with_input_as_a_keyword_keeps_the_closed_form():
    class Keyword(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
            self.body.requires_grad_(False)

        def forward(self, x):
            return self.head(input=torch.tanh(self.body(x)))

    model = Keyword().double()
    X = torch.randn(5, 4, dtype=torch.float64)
    obj = make_objective(model, lambda o, t: torch.nn.functional.cross_entropy(o, t, reduction="none"), 0.1, X[:2])
    assert isinstance(obj, LinearObjective)
    torch.testing.assert_close(obj.features(X), torch.tanh(model.body(X)))


def test_a_model_returning_a_tuple_uses_autodiff_with_the_same_answers():
    """forward returns (logits, features): no closed form (the head's output is not the model's), the same s_test
    as the model that returns the logits alone."""
    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
            self.body.requires_grad_(False)

        def forward(self, x):
            features = torch.tanh(self.body(x))
            return self.head(features), features

    torch.manual_seed(0)
    model = Pair().double()
    X, y = torch.randn(12, 4, dtype=torch.float64), torch.arange(12) % 2
    ce = torch.nn.functional.cross_entropy
    assert not isinstance(make_objective(model, lambda o, t: ce(o[0], t, reduction="none"), 0.1, X[:2]),
                          LinearObjective)
    kw = dict(l2=0.1, stationarity_tol=float("inf"))  # untrained: theta is not a minimum
    pair = infl.Influence(model, lambda o, t: ce(o[0], t, reduction="none"), **kw)
    plain = infl.Influence(torch.nn.Sequential(model.body, torch.nn.Tanh(), model.head),
                           lambda o, t: ce(o, t, reduction="none"), **kw)
    torch.testing.assert_close(pair.fit((X, y)).s_test((X[:3], y[:3])), plain.fit((X, y)).s_test((X[:3], y[:3])))


def test_a_nonlinearity_after_the_head_uses_autodiff(logreg):
    """ReLU after the last Linear: outputs are not affine in theta even if a probe says so."""
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.ReLU()).double()
    with torch.no_grad():
        model[0].bias.fill_(50.0)  # the probe lands where ReLU is the identity
    assert not isinstance(make_objective(model, logreg.loss_fn, 0.05, logreg.X[:2]), LinearObjective)


def test_assign_keeps_the_objective_describing_the_model():
    """assign(model, obj, theta) sets the model's parameters and obj.theta, so a later minimize(obj, ...)
    starts from theta, not from the parameters obj was built with."""
    from infl.objective import Objective
    from infl.train import assign, minimize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    X, y = torch.randn(20, 3, dtype=torch.float64), torch.randint(0, 2, (20,))
    obj = Objective(model, lambda out, t: torch.nn.functional.cross_entropy(out, t, reduction="none"), 0.1)
    theta = minimize(obj, X, y, tol=1e-9)
    assign(model, obj, theta)
    assert torch.equal(obj.theta, theta)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), theta)
    assert torch.allclose(minimize(obj, X, y, tol=1e-9, max_iter=1), theta, atol=1e-9)  # already there
