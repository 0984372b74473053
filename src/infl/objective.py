"""The training objective as a pure function of one flat parameter vector.

R(theta) = (1/n) * sum_i L(z_i, theta) + (1/2) * sum_k l2_k * theta_k^2   (MATH.md)

l2 is one weight decay for every trainable parameter (a float) or one per
parameter (a mapping by name), e.g. scikit-learn's unpenalised intercepts.

theta is the concatenation of the model's trainable parameters in
`model.parameters()` order, so it has p = sum of their sizes entries. The
model is never modified: every evaluation goes through
`torch.func.functional_call` with the parameters passed in.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Callable, Iterator, Mapping, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from .errors import InputError

LossFn = Callable[[Tensor, Tensor], Tensor]
L2 = Union[float, Mapping[str, Union[float, Tensor]]]
"""A float (the same l2 on every trainable parameter) or {parameter name: l2}, where each l2 is
a number or a tensor shaped like that parameter; trainable parameters not named get 0."""


def is_integer(value: object) -> bool:
    """Whether value is an integer, a NumPy one too, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _padding_rows(model: nn.Module, attributes: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """(attribute name, (rows, 1) bool mask of the padding row) for each trainable nn.Embedding / EmbeddingBag
    weight with a padding_idx. PyTorch gives that row gradient 0 in the lookup in reverse mode but not in forward
    mode, so the lookup must see it as a constant (a weight tied to another layer still trains there). Refuses
    scale_grad_by_freq, whose rescaled gradient is not the loss's, and a padding row under a parametrization."""
    from torch.nn.utils import parametrize

    out = []
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            continue
        if parametrize.is_parametrized(m, "weight") and m.padding_idx is not None \
                and any(p.requires_grad for p in m.parametrizations.weight.parameters()):
            raise InputError(f"{name} is an embedding with padding_idx under a parametrization: its padding row "
                             "cannot be held constant in the lookup; freeze it (requires_grad=False) or remove the "
                             "parametrization for influence")
        if not m.weight.requires_grad:
            continue
        if m.scale_grad_by_freq:
            raise InputError(f"{name or 'the model'} is an embedding with scale_grad_by_freq=True: its gradient is "
                             "rescaled by token counts, so it is not the loss's gradient; build it with "
                             "scale_grad_by_freq=False for influence (the outputs are the same)")
        if m.padding_idx is None:
            continue
        own = next(n for n, t in attributes if t is m.weight and model.get_submodule(n.rpartition(".")[0]) is m)
        mask = torch.zeros(m.num_embeddings, 1, dtype=torch.bool, device=m.weight.device)
        mask[m.padding_idx] = True
        out.append((own, mask))
    return out


def _attributes(model: nn.Module, named: Iterator[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """(name, tensor) for each module attribute holding one, once: a module reused (called or registered
    twice) is one attribute under several names, and functional_call given two of them swaps it twice and
    leaves a plain tensor in the model; a tensor shared by two modules is two attributes, both kept."""
    seen, out = set(), []
    for name, tensor in named:
        prefix, _, attribute = name.rpartition(".")
        key = (id(model.get_submodule(prefix)), attribute)
        if key not in seen:
            seen.add(key)
            out.append((name, tensor))
    return out


def nonnegative_number(value: object) -> float | None:
    """value as a float when it is a finite real >= 0 (Python or NumPy scalar, 0-d array, one-element
    tensor; not a bool), else None."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.dtype == torch.bool:
            return None
        value = value.item()
    ok = (isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))
          and math.isfinite(value) and value >= 0)
    return float(value) if ok else None


def positive_number(value: object) -> float | None:
    """value as a float when it is a finite real > 0 (as nonnegative_number takes them), else None."""
    number = nonnegative_number(value)
    return number if number else None


def check_l2(l2: L2) -> L2:
    """l2 as a float when it is a number >= 0, or a mapping of such numbers and non-negative tensors
    (NumPy arrays become tensors), else an InputError."""
    if isinstance(l2, Mapping):
        out = {}
        for name, value in l2.items():
            if isinstance(value, np.ndarray) and value.ndim:
                value = torch.as_tensor(value)
            number = nonnegative_number(value)
            if number is not None:
                out[name] = number
            elif (isinstance(value, Tensor) and not value.dtype == torch.bool
                  and bool(torch.isfinite(value).all()) and bool((value >= 0).all())):
                out[name] = value
            else:
                raise InputError(f"l2[{name!r}] must be a finite number >= 0 or a tensor of them shaped like the "
                                 f"parameter, got {value!r}")
        return out
    number = nonnegative_number(l2)
    if number is None:
        raise InputError(f"l2 must be a finite number >= 0 (the training weight decay) or a mapping "
                         f"{{parameter name: l2}}, got {l2!r}")
    return number


def l2_vector(l2: L2, trainable: list[tuple[str, Tensor]]) -> float | Tensor:
    """l2 as R uses it: the float itself, or for a mapping a (p,) tensor in parameter order (0 where unnamed).

    Either way `l2 * V` is the l2 term of H times each row of V (k, p).
    """
    l2 = check_l2(l2)
    if not isinstance(l2, Mapping):
        return l2
    shapes = {n: p.shape for n, p in trainable}
    unknown = [k for k in l2 if k not in shapes]
    if unknown:
        raise InputError(f"l2 names {unknown} that are not trainable parameters of the model; valid names: "
                         f"{', '.join(shapes)}")
    parts = []
    for name, param in trainable:
        value = torch.as_tensor(l2.get(name, 0.0), dtype=param.dtype).to(param.device)
        if value.ndim and value.shape != param.shape:
            raise InputError(f"l2[{name!r}] has shape {tuple(value.shape)} but the parameter has shape "
                             f"{tuple(param.shape)}; give a number or a tensor of the parameter's shape")
        parts.append(value.expand(param.shape).reshape(-1))
    return torch.cat(parts)


def describe_l2(l2: L2) -> str:
    """A short text for messages: the float, or name=value pairs."""
    if not isinstance(l2, Mapping):
        return f"{l2:g}"
    return "{" + ", ".join(f"{k}: {v:g}" if nonnegative_number(v) is not None else f"{k}: tensor" for k, v in l2.items()) + "}"

_STOCHASTIC_IN_TRAINING = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def check_deterministic(model: nn.Module) -> None:
    """Refuse a model whose forward pass depends on the batch or on chance.

    Dropout and batch norm in training mode make the loss of one example
    random or batch dependent, so its gradient is not the one influence
    functions need.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            raise InputError(
                f"the model's layer '{name or type(model).__name__}' ({type(module).__name__}) has "
                "track_running_stats=False, so it normalises with the statistics of each batch even in eval mode "
                "and one example's loss depends on the others; use running statistics (track_running_stats=True, "
                "trained) or a per-example normalisation such as nn.LayerNorm / nn.GroupNorm"
            )
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
        l2: weight decay of the training objective (part of the Hessian): a
            float for every trainable parameter, or {parameter name: l2}.

    Attributes:
        l2: a float, or a (p,) tensor of per-entry weight decays in theta
            order; either way `l2 * V` is the l2 part of H times the rows of V.
        l2_min: the smallest of them (a lower bound on H's eigenvalues for a
            convex loss).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, l2: L2 = 0.0) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise InputError(f"loss_fn must be callable as loss_fn(outputs, targets), got {loss_fn!r}")
        check_l2(l2)
        check_deterministic(model)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise InputError("the model has no parameters with requires_grad=True; nothing to differentiate")
        self.model, self.loss_fn = model, loss_fn
        self.l2 = l2_vector(l2, trainable)
        self.l2_min = float(self.l2.min()) if isinstance(self.l2, Tensor) else self.l2
        self.names = [n for n, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.sizes = [p.numel() for _, p in trainable]
        everything = _attributes(model, model.named_parameters(remove_duplicate=False))
        self.padded = _padding_rows(model, everything)
        self.fixed = {n: p.detach() for n, p in everything if not p.requires_grad}
        self.fixed.update(_attributes(model, model.named_buffers(remove_duplicate=False)))
        canonical = {id(p): n for n, p in trainable}
        self.aliases = [(n, canonical[id(p)]) for n, p in everything if id(p) in canonical and n != canonical[id(p)]]
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

    def to(self, dtype: torch.dtype) -> Objective:
        """A copy that evaluates in `dtype`: theta, the floating buffers and frozen parameters, and a per-entry
        l2 cast (the model itself is not touched; it runs on the tensors passed in)."""
        out = copy.copy(self)
        out.theta, out.dtype = self.theta.to(dtype), dtype
        out.fixed = {n: t.to(dtype) if t.is_floating_point() else t for n, t in self.fixed.items()}
        if isinstance(self.l2, Tensor):
            out.l2 = self.l2.to(dtype)
        return out

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """theta (p,) -> {parameter name: tensor of its shape}."""
        chunks = torch.split(theta, self.sizes)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def tensors(self, theta: Tensor) -> dict[str, Tensor]:
        """Every parameter and buffer of the model by each of its names, the trainable ones from theta (p,)."""
        own = self.unflatten(theta)
        out = {**self.fixed, **own, **{alias: own[name] for alias, name in self.aliases}}
        for name, pad in self.padded:  # a constant in the lookup, as reverse mode treats it (forward mode does not)
            out[name] = torch.where(pad, out[name].detach(), out[name])
        return out

    def outputs(self, theta: Tensor, X: Tensor) -> Tensor:
        """Model outputs for inputs X (b, ...) at parameters theta."""
        return functional_call(self.model, self.tensors(theta), (X,), tie_weights=False)  # ties: `aliases`

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

    def directional_grads(self, T: Tensor, X: Tensor, y: Tensor) -> Tensor:
        """t . grad_theta L(z_i, theta_hat) for each row t of T (k, p) and example i of (X, y): (k, b).

        One forward-mode product of the batch's losses per row (vectorised); no per-example gradient is
        formed, so it costs about k forward passes instead of b gradients of p numbers.
        """
        f = lambda theta: self.losses(theta, X, y)  # noqa: E731
        return vmap(lambda t: jvp(f, (self.theta,), (t,))[1])(T)

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

    def first_failure(self, X: Tensor, y: Tensor) -> tuple[int, Exception] | None:
        """The first row i of (X, y) whose loss alone raises, with its exception; None if none does."""
        with torch.no_grad():
            for i in range(X.shape[0]):
                try:
                    self.losses(self.theta, X[i:i + 1], y[i:i + 1])
                except Exception as exc:  # noqa: BLE001 - any failure of the user's loss on this example names it
                    return i, exc
        return None

    def check_loss(self, X: Tensor, y: Tensor) -> None:
        """Check all targets y (n, ...) with loss_fn.check_targets(y) if the loss has one, then on the first two
        examples that loss_fn returns one finite loss per example, that per-example gradients work, and that
        each example's loss is the same in the batch as alone (it depends on that example only)."""
        check_targets = getattr(self.loss_fn, "check_targets", None)
        if check_targets is not None:
            check_targets(y)
        X, y = X[:2], y[:2]
        try:
            out = self.losses(self.theta, X, y)
        except Exception as exc:  # the user's model or loss failed: say where
            alone = [self.first_failure(X[i:i + 1], y[i:i + 1]) for i in range(X.shape[0])]
            if sum(a is not None for a in alone) == 1 and X.shape[0] > 1:  # one example's own failure: name it
                row = next(i for i, a in enumerate(alone) if a is not None)
                raise example_failed(row, alone[row][1]) from exc
            raise InputError(
                f"the model and loss_fn could not evaluate a batch of inputs shaped {tuple(X.shape)} "
                f"with targets shaped {tuple(y.shape)}: {type(exc).__name__}: {exc}{_dtype_hint(exc, X, self.dtype)}"
            ) from exc
        if out.shape != (X.shape[0],):
            raise InputError(
                f"loss_fn must return one loss per example, shape ({X.shape[0]},), but returned shape "
                f"{tuple(out.shape)}; use reduction='none' (e.g. lambda out, y: F.cross_entropy(out, y, "
                "reduction='none')) and sum or squeeze any per-output dimension"
            )
        if not torch.isfinite(out).all():
            raise InputError("loss_fn returned NaN or inf on the data; check the data, the targets and the model")
        try:  # one example at a time, as every gradient is taken (torch.func.vmap over grad)
            self.per_example_grads(X, y)
        except Exception as exc:
            raise InputError(f"the per-example gradient (torch.func: vmap over grad, one example as a batch of "
                             f"one) failed on inputs shaped {tuple(X.shape[1:])}: {type(exc).__name__}: {exc}"
                             f"{_vmap_hint(exc, X, self.dtype, self.model)}") from exc
        alone = torch.cat([self.losses(self.theta, X[i:i + 1], y[i:i + 1]) for i in range(X.shape[0])])
        tol = torch.finfo(out.dtype).eps ** 0.5 if out.is_floating_point() else 0.0
        if not torch.allclose(out, alone, rtol=tol, atol=tol):
            raise InputError(
                f"an example's loss depends on the other examples in its batch: {out.tolist()} for a batch of "
                f"{X.shape[0]}, {alone.tolist()} one at a time. Influence needs each example's loss to depend on "
                "that example only: remove statistics over the batch (e.g. x - x.mean(0), or normalisation by "
                "batch statistics; use model.eval() with running statistics, or nn.LayerNorm)"
            )


def example_failed(row: int, error: Exception) -> InputError:
    """The error for a loss that fails on example `row` of the data given (numbered as the user's), with its own
    exception `error`."""
    return InputError(f"the loss fails on example {row} of the data given ({type(error).__name__}: {error}); "
                      "check that example's label and input (e.g. a class label outside 0..C-1)")


def _dtype_hint(exc: Exception, X: Tensor, dtype: torch.dtype) -> str:
    """A fix for integer inputs given to a floating-point model, if that is what failed."""
    text = str(exc)
    if not X.is_floating_point() and ("dtype" in text or "Long" in text or "Byte" in text):
        return (f"; the inputs are {X.dtype} and the model computes in {dtype}: pass float inputs "
                "(X.to(torch.float64) / X.astype(float)) unless they are token ids for an embedding")
    return ""


def _vmap_hint(exc: Exception, X: Tensor, dtype: torch.dtype, model: nn.Module) -> str:
    """A likely fix for a failure of the per-example gradient, from its message and the model's layers."""
    text = str(exc)
    if any(isinstance(m, nn.RNNBase) for m in model.modules()) and "shape" in text:
        return ("; the model has a recurrent layer (nn.RNN / GRU / LSTM), whose default initial state is sized for "
                "the whole batch: pass one explicitly, built from the input, e.g. rnn(x, x.new_zeros(num_layers * "
                "directions, x.shape[0], hidden)) with batch_first=True (a (h0, c0) pair for an LSTM)")
    if "random" in text:
        return ("; the forward pass draws random numbers (e.g. F.dropout(x, p, training=True) in a custom "
                "module): call model.eval() and make such layers deterministic in eval mode")
    if "target size" in text.lower():
        return ("; a loss that squeezes every dimension (e.g. out.squeeze()) breaks on a batch of one: use "
                "out.squeeze(1) or out.view(-1)")
    return _dtype_hint(exc, X, dtype) or (
        "; infl needs every layer and operation to work on one example at a time under torch.func.vmap (and, for "
        "the Hessian, forward-mode AD): check that the model treats a batch of one like any other batch (e.g. "
        "batch_first for recurrent layers), or freeze the unsupported part (requires_grad=False)")
