"""Minimising the (weighted) training objective: used to train the built-in
models and to retrain for leave-one-out checks."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .errors import CurvatureError, warn
from .inputs import batches
from .losses import cross_entropy
from .objective import Objective
from .solvers.krylov import cg

CHUNK = 10  # preconditioned L-BFGS iterations between checks of the gradient in theta


def weighted_risk(obj: Objective, theta: Tensor, X: Tensor, y: Tensor, weights: Tensor, batch_size: int) -> Tensor:
    """sum_i weights_i * L(z_i, theta) + (1/2) sum_k l2_k theta_k^2 (a scalar)."""
    total = 0.5 * (obj.l2 * theta.square()).sum()
    for rows in batches(X.shape[0], batch_size):
        total = total + (weights[rows] * obj.losses(theta, X[rows], y[rows])).sum()
    return total


def reachable_tol(dtype: torch.dtype) -> float:
    """The smallest retraining tolerance (gradient's largest entry) worth asking for in dtype: 0 in float64,
    1e-3 sqrt(eps) below it (3.5e-7 in float32), where rounding makes the gradient of a mean loss noisy."""
    return 0.0 if dtype == torch.float64 else 1e-3 * torch.finfo(dtype).eps ** 0.5


def minimize(obj: Objective, X: Tensor, y: Tensor, *, weights: Tensor | None = None,
             theta0: Tensor | None = None, tol: float = 1e-9, max_iter: int = 1000,
             batch_size: int = 4096, factor: Tensor | None = None, polish: bool = False) -> Tensor:
    """argmin_theta sum_i w_i L(z_i, theta) + (1/2) sum_k l2_k theta_k^2 by full-batch L-BFGS.

    weights default to 1/n (the objective R of MATH.md); theta0 defaults to
    the model's parameters (a warm start). Stops when the gradient's largest
    entry is below `tol`; warns if max_iter is reached first. Returns (p,).

    factor: a lower-triangular L (p, p) with L L^T close to the Hessian at the
    optimum (e.g. the Cholesky factor of a nearby problem's Hessian, as the
    exact solver holds). L-BFGS then runs in u = L^T (theta - theta0), where
    the Hessian is close to I: tens of iterations instead of hundreds when l2
    is small. It runs in chunks of CHUNK iterations (keeping its history),
    checking grad_theta's largest entry against `tol` after each.

    polish: Newton steps (newton_polish) when L-BFGS ends above `tol`; for a convex objective, where its line
    search can stall on rounding short of tol (unscaled features).
    """
    n = X.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=obj.dtype, device=obj.device) if weights is None else weights
    start = (obj.theta if theta0 is None else theta0).detach().clone()
    if factor is None:
        to_theta, var, chunk = (lambda v: v), start.requires_grad_(True), max_iter
    else:
        def to_theta(u: Tensor) -> Tensor:
            return start + torch.linalg.solve_triangular(factor.mT, u.unsqueeze(1), upper=True).squeeze(1)
        var, chunk = torch.zeros_like(start, requires_grad=True), CHUNK
    opt = torch.optim.LBFGS([var], lr=1, max_iter=chunk, tolerance_grad=tol if factor is None else 0,
                            tolerance_change=0, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = weighted_risk(obj, to_theta(var), X, y, w, batch_size)
        value.backward()
        return value

    for _ in range(0, max_iter, chunk):
        state = opt.state[var]
        iters, evals = state.get("n_iter", 0), state.get("func_evals", 0)
        opt.step(closure)
        # how the step ended: its iterations or its evaluations spent, or neither (no progress: stalled)
        ended = ("iterations" if state["n_iter"] - iters >= chunk else
                 "evaluations" if state["func_evals"] - evals >= opt.defaults["max_eval"] else "stalled")
        theta = to_theta(var.detach()).requires_grad_(True)
        weighted_risk(obj, theta, X, y, w, batch_size).backward()
        gmax = theta.grad.abs().max().item()
        if gmax <= tol:
            break
    if gmax > tol and polish:
        theta, gmax = newton_polish(lambda t: weighted_risk(obj, t, X, y, w, batch_size), theta.detach(), tol)
    if not gmax <= 10 * tol:  # NaN too
        _warn_short(opt.state[var]["n_iter"], max_iter, ended, gmax, tol, polish, obj.dtype)
    return theta.detach()


def _warn_short(steps: int, max_iter: int, ended: str, gmax: float, tol: float, polish: bool, dtype: torch.dtype
                ) -> None:
    """The warning of a minimisation that ended above tol, with the likely cause of how L-BFGS `ended`."""
    if tol < reachable_tol(dtype):
        fix = (f"in {dtype} rounding keeps the gradient from tol: use a model in float64 (model.double()) or a tol "
               f"of at least {reachable_tol(dtype):.1e}")
    elif ended == "iterations":
        fix = "raise max_iter"
    elif ended == "evaluations":
        fix = ("standardise features of very different sizes (they make line searches long), or raise max_iter (it "
               "sets that budget)")
    else:
        fix = ("standardise features of very different sizes (they stall it), or, where they are standardised, the "
               "gradient has reached this precision's rounding: a tol that small is out of reach")
    ran = {"iterations": f"{steps} of max_iter={max_iter} iterations",
           "evaluations": f"{steps} iterations, its function evaluations (a budget max_iter={max_iter} sets) spent "
                          "on line searches",
           "stalled": f"{steps} iteration{'s' * (steps != 1)}, its line search making no progress (max_iter="
                      f"{max_iter})"}[ended]
    left = "and Newton steps after it left gradient max" if polish else "with gradient max"
    warn(f"L-BFGS stopped after {ran}, {left} {gmax:.2e} > tol {tol:.0e}; the optimum is not tight: {fix}")


POLISH_STEPS = 5  # Newton steps after L-BFGS at most


def newton_polish(risk: Callable[[Tensor], Tensor], theta: Tensor, tol: float) -> tuple[Tensor, float]:
    """Newton steps on the scalar risk(theta) from theta (p,): the point with the smallest gradient max seen, and
    that max. Each step solves H d = g by conjugate gradients on Hessian-vector products. No line search:
    it goes on where L-BFGS's stalls because the objective's rounding (about eps |R|) hides the decrease left
    (g^2 / 2 lambda for a curvature lambda: large for unscaled features). Stops at tol, after POLISH_STEPS, on
    a non-finite gradient, or where CG meets negative curvature (not a minimum's basin); the best point, not
    the last, since a Newton step can raise the gradient's largest entry once on its way in."""
    theta = theta.detach().requires_grad_(True)
    g = torch.autograd.grad(risk(theta), theta, create_graph=True)[0]
    gmax = g.abs().max().item()
    best = theta.detach(), gmax
    for _ in range(POLISH_STEPS):
        if not tol < gmax < math.inf:
            break
        hvp = lambda V, g=g, at=theta: torch.stack(  # noqa: E731
            [torch.autograd.grad(g, at, v, retain_graph=True)[0] for v in V])
        try:
            step, _ = cg(hvp, g.detach()[None], tol=max(1e-12, min(0.1, 0.1 * tol / gmax)),
                         max_iter=min(theta.numel(), 500))
        except CurvatureError:
            break
        theta = (theta.detach() - step[0]).requires_grad_(True)
        g = torch.autograd.grad(risk(theta), theta, create_graph=True)[0]
        gmax = g.abs().max().item()
        if gmax < best[1]:
            best = theta.detach(), gmax
    return best


def assign(model: nn.Module, obj: Objective, theta: Tensor) -> None:
    """Copy theta (p,) into the model's trainable parameters (for models `infl` trains itself), and make it
    obj.theta, so that obj keeps describing the model (minimize starts from obj.theta)."""
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in obj.unflatten(theta).items():
            params[name].copy_(value)
    obj.theta = theta.detach().clone()


def fit_logistic(X: np.ndarray, y: np.ndarray, classes: int, l2: float, *, init: nn.Linear | None = None,
                 tol: float = 1e-9, factor: Tensor | None = None) -> nn.Linear:
    """The paper's model: multinomial logistic regression nn.Linear(d, classes) in float64 at
    argmin mean cross-entropy + (l2/2)||theta||^2, by L-BFGS from zero or warm-started from
    `init`'s parameters (init itself is left unchanged). X (n, d), y (n,) integer labels.
    factor: Cholesky factor of a nearby Hessian (p = classes * (d + 1)) to precondition with (see minimize)."""
    model = nn.Linear(X.shape[1], classes).double()
    with torch.no_grad():
        for param, start in zip(model.parameters(), init.parameters() if init is not None else [None] * 2):
            param.copy_(start) if start is not None else param.zero_()
    obj = Objective(model, cross_entropy, l2)
    assign(model, obj, minimize(obj, torch.as_tensor(X), torch.as_tensor(y), tol=tol, factor=factor, polish=True))
    return model
