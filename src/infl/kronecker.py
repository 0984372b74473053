"""Kronecker-factored Gauss-Newton statistics for nn.Linear and nn.Conv2d layers (K-FAC, EK-FAC).

A layer with weight W (out, in) and optional bias computes s_t = W a_t + b at
T locations (T = 1 for a Linear on (b, in); sequence positions for a Linear on
(b, T, in); patches for a Conv2d). Write a_t with a trailing 1 when the bias
is trained, so the layer's parameters form one matrix M = [W | b] (out, in').
Its block of the Gauss-Newton matrix G = (1/n) sum_i J_i^T Lambda_i J_i is

    G_layer = (1/n) sum_i sum_c vec(D_ic) vec(D_ic)^T,   D_ic = sum_t g_ict a_it^T   (out, in'),

with Lambda_i = R_i R_i^T (R_i its symmetric square root's columns r_ic) and
g_ict = d(f_i . r_ic) / d s_it the output-side gradient. vec is row-major,
matching the flat parameter order. Then (George et al. 2018; Grosse et al. 2023)

    K-FAC:  G_layer ~= S (x) A,  S = (1/n) sum_i sum_c sum_t g g^T,  A = (1/n) sum_i (1/T) sum_t a a^T,
    EK-FAC: the eigenbasis Q_S (x) Q_A of K-FAC, with the eigenvalues refitted to
            the exact second moments  lam_jk = (1/n) sum_i sum_c (Q_S^T D_ic Q_A)_jk^2.

Parameters outside such layers get the exact diagonal of G instead, and are
named in the result, never dropped. Layers are found with forward hooks that
are removed before returning; the model itself is never modified.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from .inputs import batches
from .linear import hook_input
from .objective import Objective
from .operators import batching_failed, output_hessians


@dataclass
class Layer:
    """One Kronecker-factored layer: where its parameters sit in theta and its statistics."""

    name: str
    module: nn.Linear | nn.Conv2d
    weight: slice  # flat positions of W (out * in, row-major)
    bias: slice | None  # flat positions of b (out,), None when absent or frozen
    A: Tensor | None = None  # (in', in')
    S: Tensor | None = None  # (out, out)
    QA: Tensor | None = None
    QS: Tensor | None = None
    lam: Tensor | None = None  # (out, in') eigenvalues in the basis Q_S (x) Q_A

    @property
    def out(self) -> int:
        return self.module.weight.shape[0]

    @property
    def width(self) -> int:
        """in' = inputs per location (+1 for a trained bias)."""
        return self.module.weight[0].numel() + (self.bias is not None)

    def gather(self, V: Tensor) -> Tensor:
        """Rows of V (k, p) -> this layer's parameter matrices M = [W | b], (k, out, in')."""
        k = V.shape[0]
        Mw = V[:, self.weight].reshape(k, self.out, -1)
        return Mw if self.bias is None else torch.cat([Mw, V[:, self.bias].unsqueeze(2)], dim=2)

    def scatter(self, M: Tensor, out: Tensor) -> None:
        """Write matrices M (k, out, in') back into the flat rows of `out` (k, p)."""
        k, w = M.shape[0], self.module.weight[0].numel()
        out[:, self.weight] = M[:, :, :w].reshape(k, -1)
        if self.bias is not None:
            out[:, self.bias] = M[:, :, w]


@dataclass
class Factors:
    """Kronecker statistics of a model over a data set, and the parameters left to the diagonal."""

    layers: list[Layer]
    diag_index: Tensor  # (q,) flat positions of parameters outside the factored layers
    diag: Tensor  # (q,) the exact Gauss-Newton diagonal on them
    diag_names: list[str] = field(default_factory=list)


def _slices(obj: Objective) -> dict[str, slice]:
    out, start = {}, 0
    for name, size in zip(obj.names, obj.sizes):
        out[name] = slice(start, start + size)
        start += size
    return out


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and module.padding != "same")  # 'valid' is padding 0


def find_layers(obj: Objective, probe: Tensor, reduce: Callable[[Tensor], Tensor] = lambda t: t
                ) -> tuple[list[Layer], list[str]]:
    """The factorable layers (trained weight, called once per forward, not tied to another module nor used
    outside it, inputs batch-first: their first dimension is the examples) and the names of all other trained
    parameters. Sharded data: each process probes its own rows and `reduce` (a sum over processes) keeps
    only the layers every process found factorable, so all factor the same ones."""
    where = _slices(obj)
    calls: dict[str, int] = {}
    holders: dict[int, int] = {}  # id(weight) -> modules holding it (tied weights are used by several)
    for m in obj.model.modules():
        if isinstance(getattr(m, "weight", None), nn.Parameter):
            holders[id(m.weight)] = holders.get(id(m.weight), 0) + 1
    candidates = {name: m for name, m in obj.model.named_modules()
                  if _supported(m) and _qual(name, "weight") in where and holders[id(m.weight)] == 1}
    batch_first: dict[str, bool] = {}

    def record(name: str, x: Tensor, out: Tensor, rows: int) -> None:
        calls[name] = calls.get(name, 0) + 1
        batch_first[name] = batch_first.get(name, True) and x.shape[0] == rows

    for rows in sorted({1, probe.shape[0]}):  # two sizes: a (T, b, d) input is not mistaken for (b, T, d)
        calls.clear()
        with _hooks(candidates, lambda name, x, out, rows=rows: record(name, x, out, rows)):
            with torch.no_grad():
                obj.outputs(obj.theta, probe[:rows])
    layers = [Layer(name, m, where[_qual(name, "weight")], where.get(_qual(name, "bias")))
              for name, m in candidates.items() if calls.get(name) == 1 and batch_first[name]]
    layers = _own_their_gradients(obj, layers, probe)
    found = {layer.name for layer in layers}
    votes = reduce(torch.tensor([float(name in found) for name in candidates] + [1.0], device=obj.device))
    agreed = {name for name, vote in zip(candidates, votes[:-1].tolist()) if vote == float(votes[-1])}
    layers = [layer for layer in layers if layer.name in agreed]
    covered = {_qual(layer.name, "weight") for layer in layers} | {_qual(layer.name, "bias") for layer in layers}
    return layers, [n for n in obj.names if n not in covered]


def _qual(module: str, param: str) -> str:
    """The parameter's name in model.named_parameters() ('' is the model itself)."""
    return f"{module}.{param}" if module else param


def _own_their_gradients(obj: Objective, layers: list[Layer], probe: Tensor) -> list[Layer]:
    """The layers whose parameters' gradient is their own sum_t g_t a_t^T on the probe inputs, for a random
    output cotangent: a weight also used outside its layer (a tied decoder through F.linear, a
    parametrisation) fails this and is left to the diagonal. One forward and backward on the probe."""
    if not layers:
        return layers
    out, theta, A, outs = _forward(obj, layers, probe)
    r = torch.randn(out.shape, generator=torch.Generator(device=obj.device).manual_seed(0), dtype=out.dtype,
                    device=out.device)
    theta_grad, *gs = torch.autograd.grad(out, [theta, *outs], grad_outputs=r, allow_unused=True)
    theta_grad = torch.zeros_like(theta) if theta_grad is None else theta_grad
    kept = []
    for layer, a, o, g in zip(layers, A, outs, gs):
        own = torch.einsum("bto,bti->oi", _output_grads(layer, torch.zeros_like(o) if g is None else g), a)
        true = layer.gather(theta_grad.unsqueeze(0))[0]
        if (own - true).norm() <= torch.finfo(out.dtype).eps ** 0.5 * max(float(true.norm()), float(own.norm())):
            kept.append(layer)
    return kept


@contextmanager
def _hooks(modules: dict[str, nn.Module], record) -> Iterator[None]:
    """Forward hooks calling record(name, x, out) on each module with its input x, passed by position or as
    `input=`; always removed. record may return a replacement output."""
    handles = [m.register_forward_hook(lambda mod, args, kwargs, out, name=name: record(name, hook_input(args, kwargs),
                                                                                      out), with_kwargs=True)
               for name, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _inputs(layer: Layer, x: Tensor) -> Tensor:
    """The layer's inputs as locations: (b, T, in'), with the trailing 1 for a trained bias."""
    m = layer.module
    if isinstance(m, nn.Conv2d):
        padding = 0 if m.padding == "valid" else m.padding
        a = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride).transpose(1, 2)
    else:
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    if layer.bias is not None:
        a = torch.cat([a, torch.ones_like(a[..., :1])], dim=-1)
    return a


def _output_grads(layer: Layer, g: Tensor) -> Tensor:
    """Gradients at the layer's outputs as locations: (b, T, out)."""
    if isinstance(layer.module, nn.Conv2d):
        return g.flatten(2).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


def _sqrt_columns(Lam: Tensor) -> Tensor:
    """R (b, m, m) with R R^T = Lambda (b, m, m), negative eigenvalues clipped to 0 (a PSD Gauss-Newton)."""
    e, U = torch.linalg.eigh(Lam)
    return U * e.clamp_min(0).sqrt().unsqueeze(1)


def _forward(obj: Objective, layers: list[Layer], X: Tensor) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
    """The outputs for X at theta (a leaf requiring grad), theta, and per layer its inputs a (b, T, in') and
    its outputs (nodes of the graph, so gradients can be taken at them)."""
    theta = obj.theta.detach().requires_grad_(True)
    seen: dict[str, tuple[Tensor, Tensor]] = {}

    def record(name: str, x: Tensor, out: Tensor) -> Tensor:
        seen[name] = (x.detach(), out)
        return out.clone()  # an in-place op after the layer must not change the tensor we differentiate at

    with _hooks({layer.name: layer.module for layer in layers}, record), torch.enable_grad():
        out = obj.outputs(theta, X)
    return (out, theta, [_inputs(layer, seen[layer.name][0]) for layer in layers],
            [seen[layer.name][1] for layer in layers])


def _pseudo_grads(obj: Objective, layers: list[Layer], X: Tensor, y: Tensor) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """For each output column c: per layer, inputs a (b, T, in') and output-side gradients g_c (b, T, out),
    for the cotangents r_ic (the columns of Lambda_i's square root)."""
    out, _, A, outs = _forward(obj, layers, X)
    R = _sqrt_columns(output_hessians(obj.loss_fn, out, y))
    flat = out.reshape(out.shape[0], -1)
    for c in range(flat.shape[1]):
        gs = torch.autograd.grad(flat, outs, grad_outputs=R[:, :, c], retain_graph=True, allow_unused=True)
        yield A, [_output_grads(layer, torch.zeros_like(o) if g is None else g)
                  for layer, g, o in zip(layers, gs, outs)]


def _diag_ggn(obj: Objective, index: Tensor, X: Tensor, y: Tensor, chunk_numbers: int = 2**23) -> Tensor:
    """sum_i diag(J_i^T Lambda_i J_i) restricted to the flat positions `index`, (q,)."""
    with torch.no_grad():
        R = _sqrt_columns(output_hessians(obj.loss_fn, obj.outputs(obj.theta, X), y))  # (b, m, m)

    def column(x: Tensor, r: Tensor) -> Tensor:  # J_i^T r at one example, (p,)
        return grad(lambda t: (obj.outputs(t, x.unsqueeze(0)).reshape(-1) * r).sum())(obj.theta)

    per_column = vmap(vmap(column, in_dims=(None, 1)))
    total = torch.zeros(index.numel(), dtype=obj.dtype, device=obj.device)
    for r in batches(X.shape[0], max(1, chunk_numbers // (R.shape[1] * obj.p))):
        try:
            total += per_column(X[r], R[r])[..., index].square().sum((0, 1))  # (b, m, p) -> (q,)
        except RuntimeError as error:
            raise batching_failed("the exact Gauss-Newton diagonal of the parameters outside factored layers",
                                  error) from error
    return total


def _input_moment(layer_a: Tensor) -> Tensor:
    """Summed sum_i (1/T) sum_t a a^T over a batch, (in', in')."""
    a = layer_a.reshape(-1, layer_a.shape[-1])
    return a.T @ a / layer_a.shape[1]


def _output_moment(g: Tensor) -> Tensor:
    """Summed sum_i sum_t g g^T over a batch, (out, out)."""
    g2 = g.reshape(-1, g.shape[-1])
    return g2.T @ g2


def _eigen_moments(layer: Layer, ah: Tensor, g: Tensor, chunk_numbers: int = 2**23) -> Tensor:
    """sum_i (Q_S^T D_i Q_A)^2 over a batch, D_i = sum_t g_it a_it^T, from the rotated inputs ah = a Q_A: (out, in')."""
    gh = g @ layer.QS  # (b, T, out)
    if ah.shape[1] == 1:
        return gh[:, 0].square().T @ ah[:, 0].square()
    total = torch.zeros(layer.out, layer.width, dtype=ah.dtype, device=ah.device)
    rows = max(1, chunk_numbers // (layer.out * layer.width))
    for r in batches(ah.shape[0], rows):
        total += (gh[r].transpose(1, 2) @ ah[r]).square().sum(0)
    return total


def fit_factors(obj: Objective, X: Tensor, y: Tensor, batch_size: int, eigen: bool, n_total: int | None = None,
                reduce: Callable[[Tensor], Tensor] = lambda t: t) -> Factors:
    """Kronecker statistics over the data (X, y); eigen=True refits the eigenvalues (EK-FAC, a second pass).

    Sharded data: (X, y) is this process's shard, n_total the examples over all
    processes and reduce sums a statistic over them (infl.dist.all_sum).
    """
    n = X.shape[0] if n_total is None else n_total
    layers, others = find_layers(obj, X[:2], reduce)
    for layer in layers:
        layer.A = torch.zeros(layer.width, layer.width, dtype=obj.dtype, device=obj.device)
        layer.S = torch.zeros(layer.out, layer.out, dtype=obj.dtype, device=obj.device)
    where = _slices(obj)
    index = torch.cat([torch.arange(obj.p)[where[name]] for name in others]) if others else torch.zeros(0, dtype=torch.long)
    diag = torch.zeros(index.numel(), dtype=obj.dtype, device=obj.device)
    for rows in batches(X.shape[0], batch_size):
        for c, (As, Gs) in enumerate(_pseudo_grads(obj, layers, X[rows], y[rows]) if layers else ()):
            for layer, a, g in zip(layers, As, Gs):
                if c == 0:  # the inputs are the same for every output column
                    layer.A += _input_moment(a)
                layer.S += _output_moment(g)
        if index.numel():
            diag += _diag_ggn(obj, index.to(obj.device), X[rows], y[rows])
    for layer in layers:
        layer.A = reduce(layer.A) / n
        layer.S = reduce(layer.S) / n
        eA, layer.QA = torch.linalg.eigh(layer.A)
        eS, layer.QS = torch.linalg.eigh(layer.S)
        layer.lam = eS.clamp_min(0).unsqueeze(1) * eA.clamp_min(0).unsqueeze(0)
    if eigen and layers:
        for layer in layers:
            layer.lam = torch.zeros_like(layer.lam)
        for rows in batches(X.shape[0], batch_size):
            rotated: list[Tensor] = []
            for As, Gs in _pseudo_grads(obj, layers, X[rows], y[rows]):
                rotated = rotated or [a @ layer.QA for layer, a in zip(layers, As)]  # once per batch, not per column
                for layer, ah, g in zip(layers, rotated, Gs):
                    layer.lam += _eigen_moments(layer, ah, g)
        for layer in layers:
            layer.lam = reduce(layer.lam) / n
    return Factors(layers, index.to(obj.device), (reduce(diag) if index.numel() else diag) / n, others)
