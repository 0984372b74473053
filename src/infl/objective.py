"""The training objective as a pure function of one flat parameter vector.

R(theta) = (1/n) * sum_i L(z_i, theta) + (l2/2) * ||theta||^2   (MATH.md)

theta is the concatenation of the model's trainable parameters in
`model.parameters()` order, so it has p = sum of their sizes entries. The
model is never modified: every evaluation goes through
`torch.func.functional_call` with the parameters passed in.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from .errors import InputError

LossFn = Callable[[Tensor, Tensor], Tensor]

_STOCHASTIC_IN_TRAINING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def check_deterministic(model: nn.Module) -> None:
    """Refuse a model whose forward pass depends on the batch or on chance.

    Dropout and batch norm in training mode make the loss of one example
    random or batch dependent, so its gradient is not the one influence
    functions need.
    """
    for name, module in model.named_modules():
        if module.training and isinstance(module, _STOCHASTIC_IN_TRAINING):
            kind = type(module).__name__
            raise InputError(
                f"the model is in training mode and its layer '{name or type(model).__name__}' "
                f"({kind}) then behaves randomly or depends on the batch; call model.eval() "
                "before computing influence"
            )


class Objective:
    """Per-example loss, l2 and model, as pure functions of theta (p,).

    Args:
        model: the trained network; left exactly as it was.
        loss_fn: loss_fn(outputs, targets) -> per-example losses (b,), i.e.
            with reduction="none". The 1/n is applied here, not by loss_fn.
        l2: weight decay of the training objective; part of the Hessian.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, l2: float = 0.0) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise InputError(f"loss_fn must be callable as loss_fn(outputs, targets), got {loss_fn!r}")
        if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 >= 0):
            raise InputError(f"l2 must be a finite number >= 0 (the training weight decay), got {l2!r}")
        check_deterministic(model)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise InputError("the model has no parameters with requires_grad=True; nothing to differentiate")
        self.model, self.loss_fn, self.l2 = model, loss_fn, float(l2)
        self.names = [n for n, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.sizes = [p.numel() for _, p in trainable]
        self.fixed = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.fixed.update({n: b for n, b in model.named_buffers()})
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in trainable]).clone()
        self.dtype, self.device = self.theta.dtype, self.theta.device
        if not torch.isfinite(self.theta).all():
            bad = [n for n, p in trainable if not torch.isfinite(p).all()]
            raise InputError(f"the model's parameters contain NaN or inf (in {', '.join(bad)}); "
                             "retrain or reload the model")

    @property
    def p(self) -> int:
        """Number of trainable parameters."""
        return self.theta.numel()

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """theta (p,) -> {parameter name: tensor of its shape}."""
        chunks = torch.split(theta, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def outputs(self, theta: Tensor, X: Tensor) -> Tensor:
        """Model outputs for inputs X (b, ...) at parameters theta."""
        return functional_call(self.model, {**self.fixed, **self.unflatten(theta)}, (X,))

    def losses(self, theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
        """Per-example losses L(z_i, theta), shape (b,)."""
        return self.loss_fn(self.outputs(theta, X), y)

    def _loss_one(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.losses(theta, x.unsqueeze(0), y.unsqueeze(0)).squeeze(0)

    def loss_sum(self, theta: Tensor, X: Tensor, y: Tensor) -> Tensor:
        """sum_i L(z_i, theta) over the batch (a scalar; no 1/n, no l2)."""
        return self.losses(theta, X, y).sum()

    def per_example_grads(self, X: Tensor, y: Tensor, theta: Tensor | None = None) -> Tensor:
        """grad_theta L(z_i, theta) for each example, shape (b, p); unregularised."""
        theta = self.theta if theta is None else theta
        return vmap(grad(self._loss_one), in_dims=(None, 0, 0))(theta, X, y)

    def input_grads(self, X: Tensor, y: Tensor, direction: Tensor) -> Tensor:
        """grad_x of (direction . grad_theta L((x, y), theta_hat)) per example, shaped like X."""

        def scalar(x: Tensor, t: Tensor) -> Tensor:
            return grad(self._loss_one)(self.theta, x, t) @ direction

        return vmap(grad(scalar), in_dims=(0, 0))(X, y)

    def data_hvp(self, V: Tensor, X: Tensor, y: Tensor) -> Tensor:
        """sum_i grad^2 L(z_i, theta_hat) @ v for each row v of V (k, p) -> (k, p).

        No 1/n and no l2: callers add them once for the whole data set.
        """
        g = grad(self.loss_sum)

        def one(v: Tensor) -> Tensor:
            return jvp(lambda t: g(t, X, y), (self.theta,), (v,))[1]

        return vmap(one)(V)

    def check_loss(self, X: Tensor, y: Tensor) -> None:
        """Check on a batch that loss_fn returns one finite loss per example."""
        try:
            out = self.losses(self.theta, X, y)
        except Exception as exc:  # the user's model or loss failed: say where
            raise InputError(
                f"the model and loss_fn could not evaluate a batch of inputs shaped {tuple(X.shape)} "
                f"with targets shaped {tuple(y.shape)}: {type(exc).__name__}: {exc}"
            ) from exc
        if out.shape != (X.shape[0],):
            raise InputError(
                f"loss_fn must return one loss per example, shape ({X.shape[0]},), but returned shape "
                f"{tuple(out.shape)}; use reduction='none' (e.g. lambda out, y: F.cross_entropy(out, y, "
                "reduction='none')) and sum or squeeze any per-output dimension"
            )
        if not torch.isfinite(out).all():
            raise InputError("loss_fn returned NaN or inf on the data; check the data, the targets and the model")
