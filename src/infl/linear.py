"""Closed forms for models whose outputs are affine in theta.

A plain `nn.Linear`, or a network whose only trainable layer is a final
`nn.Linear` head on frozen features (the paper's Inception setting), has
outputs f_i = W a_i + b with features a_i that do not depend on theta. Then
per-example gradients are outer products, the Hessian equals the
Gauss-Newton matrix sum_i J_i^T Lambda_i J_i exactly (Lambda_i the Hessian of
the loss in the outputs), and every product is a few matrix multiplies.
`LinearObjective` computes the same quantities as `Objective`, faster.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import grad, hessian, vmap

from .errors import InputError
from .inputs import batches
from .objective import L2, LossFn, Objective
from .operators import GaussNewton, Hessian, Operator, psd_part


def find_head(model: nn.Module) -> nn.Linear | None:
    """The nn.Linear holding every trainable parameter (weight, and bias if any), else None."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            own = {id(p) for p in module.parameters()}
            if own == trainable and module.weight.requires_grad:
                return module
    return None


class LinearObjective(Objective):
    """An Objective for outputs affine in theta, f_i = W a_i + b, with features a_i = features(x_i).

    theta = (W.flatten(), b) in parameter order; C outputs, d features.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, l2: L2, head: nn.Linear) -> None:
        super().__init__(model, loss_fn, l2)
        self.head = head
        self.C, self.d = head.out_features, head.in_features
        self.has_bias = head.bias is not None
        self._loss_one_out = lambda f, t: loss_fn(f.unsqueeze(0), t.unsqueeze(0)).squeeze(0)

    def features(self, X: Tensor) -> Tensor:
        """The head's inputs a_i, (b, d); no gradient flows into the frozen part."""
        if self.head is self.model:
            return X
        seen: list[Tensor] = []
        handle = self.head.register_forward_hook(
            lambda m, args, kwargs, out: seen.append(hook_input(args, kwargs).detach()), with_kwargs=True)
        try:
            with torch.no_grad():
                self.model(X)
        finally:
            handle.remove()
        return seen[0]

    def _split(self, V: Tensor) -> tuple[Tensor, Tensor | None]:
        """Rows of V (k, p) -> weight part (k, C, d) and bias part (k, C) or None."""
        Vw = V[:, : self.C * self.d].reshape(-1, self.C, self.d)
        return Vw, (V[:, self.C * self.d:] if self.has_bias else None)

    def _join(self, Gw: Tensor, Gb: Tensor | None) -> Tensor:
        flat = Gw.reshape(Gw.shape[0], -1)
        return flat if Gb is None else torch.cat([flat, Gb], dim=1)

    def _head_outputs(self, A: Tensor, theta: Tensor) -> Tensor:
        Wt, bt = self._split(theta.unsqueeze(0))
        F = A @ Wt[0].T
        return F if bt is None else F + bt[0]

    def _output_grads(self, A: Tensor, y: Tensor, theta: Tensor | None = None) -> Tensor:
        """dL/df_i for features A (b, d) and targets y: (b, C)."""
        return vmap(grad(self._loss_one_out))(self._head_outputs(A, self.theta if theta is None else theta), y)

    def per_example_grads(self, X: Tensor, y: Tensor, theta: Tensor | None = None) -> Tensor:
        A = self.features(X)
        delta = self._output_grads(A, y, theta)
        return self._join(delta.unsqueeze(2) * A.unsqueeze(1), delta if self.has_bias else None)

    def directional_grads(self, T: Tensor, X: Tensor, y: Tensor) -> Tensor:
        """t . grad L(z_i) = dL/df_i . (T_w a_i + t_b) for each row t of T (k, p): (k, b), by matrix products
        on d rows of T at a time (their (d, C, b) outputs hold no more numbers than the b x p gradients)."""
        A = self.features(X)
        delta = self._output_grads(A, y).T  # (C, b)
        out = T.new_empty(T.shape[0], X.shape[0])
        for rows in batches(T.shape[0], self.d):
            Tw, Tb = self._split(T[rows])
            JT = (Tw.reshape(-1, self.d) @ A.T).view(Tw.shape[0], self.C, -1)  # the outputs' change along t
            if Tb is not None:
                JT += Tb.unsqueeze(2)
            out[rows] = torch.einsum("kcb,cb->kb", JT, delta)
        return out

    def out_hessians(self, X: Tensor, y: Tensor) -> Tensor:
        """Lambda_i = d^2 L / df^2 at theta_hat for each example, (b, C, C)."""
        return vmap(hessian(self._loss_one_out))(self._head_outputs(self.features(X), self.theta), y)


class LinearHessian(Operator):
    """H = (1/n) sum_i J_i^T Lambda_i J_i + diag(l2) for outputs affine in theta (exact, not an approximation).

    Holds the features A (n, d) and output Hessians Lambda (n, C, C) of the
    data, computed once; a product with k rows costs O(k n C d).
    """

    name = "hessian"

    def __init__(self, obj: LinearObjective, X: Tensor, y: Tensor, batch_size: int = 1024,
                 cache: tuple[Tensor, Tensor] | None = None, gauss_newton: bool = False) -> None:
        self.obj, self.batch_size, self.X, self.y = obj, batch_size, X, y
        self.p, self.dtype, self.device = obj.p, obj.dtype, obj.device
        self.gauss_newton = gauss_newton
        if gauss_newton:  # the same matrix, but for a loss not convex in the outputs: Lambda_i's PSD part
            self.name = "gauss-newton"
        if cache is None:
            parts = [(obj.features(X[r]), obj.out_hessians(X[r], y[r])) for r in batches(X.shape[0], batch_size)]
            parts = parts or [(X.new_zeros(0, obj.d), X.new_zeros(0, obj.C, obj.C))]  # a process with no rows
            cache = (torch.cat([a for a, _ in parts]), torch.cat([m for _, m in parts]))
            if gauss_newton:
                cache = (cache[0], psd_part(cache[1]))
        self.A, self.Lam = cache

    @property
    def n(self) -> int:
        return self.A.shape[0]

    def in_float32(self) -> LinearHessian:
        return LinearHessian(self.obj.to(torch.float32), self.X, self.y, self.batch_size,
                             (self.A.float(), self.Lam.float()), self.gauss_newton)

    def matmat(self, V: Tensor) -> Tensor:
        obj = self.obj
        Vw, Vb = obj._split(V)
        Gw = torch.zeros_like(Vw)
        Gb = None if Vb is None else torch.zeros_like(Vb)
        k, C, d = Vw.shape
        for r in batches(self.n, self.batch_size):
            A = self.A[r]
            JV = (Vw.reshape(k * C, d) @ A.T).view(k, C, -1)  # J v per example: (k, C, b)
            if Vb is not None:
                JV = JV + Vb.unsqueeze(2)
            U = torch.bmm(self.Lam[r], JV.permute(2, 1, 0).contiguous())  # Lambda_i J_i v: (b, C, k)
            U = U.permute(2, 1, 0).reshape(k * C, -1)
            Gw += (U @ A).view(k, C, d)
            if Gb is not None:
                Gb += U.sum(1).view(k, C)
        return obj._join(Gw, Gb) / self.n + obj.l2 * V

    def to_dense(self, block: int = 256) -> Tensor:
        """H (p, p): block (c, e) of the weights is A^T diag(Lambda[:, c, e]) A / n, written in place."""
        obj, A, Lam = self.obj, self.A, self.Lam
        C, d = obj.C, obj.d
        if obj.has_bias:
            A = torch.cat([A, torch.ones_like(A[:, :1])], dim=1)
        H = torch.empty(self.p, self.p, dtype=self.dtype, device=self.device)
        w = [slice(c * d, (c + 1) * d) for c in range(C)]
        for c in range(C):
            for e in range(c, C):
                blk = A.T @ (Lam[:, c, e, None] * A) / self.n  # (d [+1], d [+1])
                H[w[c], w[e]] = blk[:d, :d]
                H[w[e], w[c]] = blk[:d, :d].T
                if obj.has_bias:
                    bc, be = C * d + c, C * d + e
                    H[bc, w[e]] = H[be, w[c]] = blk[d, :d]
                    H[w[c], be] = H[w[e], bc] = blk[:d, d]
                    H[bc, be] = H[be, bc] = blk[d, d]
        H.diagonal().add_(obj.l2)
        return H

    def subset(self, index: Tensor) -> LinearHessian:
        """The same curvature over the examples `index` only (mean over them, same l2)."""
        return LinearHessian(self.obj, None, None, self.batch_size, (self.A[index], self.Lam[index]),
                             self.gauss_newton)


def hook_input(args: tuple, kwargs: dict) -> Tensor:
    """A Linear's or Conv2d's input from a forward hook's arguments (with_kwargs=True), passed by position or as
    input=."""
    return args[0] if args else kwargs["input"]


def make_objective(model: nn.Module, loss_fn: LossFn, l2: L2, probe: Tensor | None = None) -> Objective:
    """A LinearObjective when the model's outputs are affine in its trainable parameters, else an Objective.

    `probe` (a few inputs) confirms the head's output is the model's output.
    """
    head = find_head(model)
    if head is None or probe is None:
        return Objective(model, loss_fn, l2)
    seen: list[tuple[Tensor, Tensor]] = []
    handle = head.register_forward_hook(lambda m, args, kwargs, out: seen.append((hook_input(args, kwargs), out)),
                                        with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception:
        return Objective(model, loss_fn, l2)  # Objective.check_loss reports the failure
    finally:
        handle.remove()
    if (len(seen) == 1 and seen[0][0].ndim == 2 and isinstance(out, Tensor) and isinstance(seen[0][1], Tensor)
            and torch.equal(seen[0][1], out)):
        candidate = LinearObjective(model, loss_fn, l2, head)
        if _affine_in_theta(candidate, probe):
            return candidate
    return Objective(model, loss_fn, l2)


def _affine_in_theta(obj: LinearObjective, probe: Tensor) -> bool:
    """True when, at perturbed parameters too, the model's outputs equal W a + b (no nonlinearity after the head)."""
    gen = torch.Generator().manual_seed(0)
    scale = obj.theta.abs().mean().clamp_min(1.0)
    noise = scale * torch.randn(obj.p, generator=gen, dtype=obj.dtype).to(obj.device)
    for theta in (-obj.theta, obj.theta + noise, -obj.theta + noise):
        with torch.no_grad():
            if not torch.allclose(obj.outputs(theta, probe), obj._head_outputs(obj.features(probe), theta)):
                return False
    return True


CURVATURES = ("hessian", "gauss-newton")


def check_curvature(curvature: str) -> str:
    """The curvature name, or an InputError listing the choices."""
    if curvature not in CURVATURES:
        raise InputError(f"unknown curvature {curvature!r}; choose one of {', '.join(CURVATURES)}")
    return curvature


def curvature_operator(obj: Objective, X: Tensor, y: Tensor, batch_size: int, curvature: str = "hessian") -> Operator:
    """The curvature of R over (X, y): "hessian" or "gauss-newton" (PSD by construction).

    For outputs affine in theta the two are the same matrix (for a loss convex in the outputs; otherwise
    Gauss-Newton takes Lambda_i's PSD part), with closed-form products.
    """
    check_curvature(curvature)
    if isinstance(obj, LinearObjective):
        return LinearHessian(obj, X, y, batch_size, gauss_newton=curvature == "gauss-newton")
    return (Hessian if curvature == "hessian" else GaussNewton)(obj, X, y, batch_size)
