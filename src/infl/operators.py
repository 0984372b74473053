"""Curvature as symmetric p x p operators with a batched multiply.

Vectors are batched as rows: `op @ V` takes V (k, p) and returns (k, p),
the product with each row. Operators compose: `op + c` shifts by c * I.
"""

from __future__ import annotations

import copy
from typing import Callable, TypeVar

import torch
from torch import Tensor
from torch.func import hessian, jacrev, jvp, vjp, vmap

from .errors import InputError
from .inputs import batches
from .objective import Objective

T = TypeVar("T")


class Operator:
    """A symmetric linear operator on R^p."""

    p: int
    dtype: torch.dtype
    device: torch.device
    name: str = "operator"

    def matmat(self, V: Tensor) -> Tensor:
        """The product with each row of V (k, p) -> (k, p)."""
        raise NotImplementedError

    def __matmul__(self, V: Tensor) -> Tensor:
        return self.matmat(V)

    def __add__(self, shift: float) -> Operator:
        return self if shift == 0 else Shifted(self, float(shift))

    def in_float32(self) -> Operator | None:
        """The same operator computing in float32, or None where it has no such form."""
        return None

    def dense_footprint(self) -> dict[str, int]:
        """Bytes to_dense holds besides the p x p result, by item (footprints list them): none beyond a few
        blocks of products here."""
        return {}

    def to_dense(self, block: int = 256) -> Tensor:
        """The p x p matrix, built from products with blocks of identity rows."""
        out = torch.empty(self.p, self.p, dtype=self.dtype, device=self.device)
        eye = torch.eye(self.p, dtype=self.dtype, device=self.device)
        for rows in batches(self.p, block):
            out[rows] = self.matmat(eye[rows])
        return (out + out.T) / 2


class Dense(Operator):
    """An explicit symmetric matrix H (p, p)."""

    name = "dense"

    def __init__(self, H: Tensor) -> None:
        if H.ndim != 2 or H.shape[0] != H.shape[1]:
            raise ValueError(f"a dense operator needs a square matrix, got shape {tuple(H.shape)}")
        self.H, self.p, self.dtype, self.device = H, H.shape[0], H.dtype, H.device

    def matmat(self, V: Tensor) -> Tensor:
        return V @ self.H

    def to_dense(self, block: int = 256) -> Tensor:
        return self.H

    def in_float32(self) -> Dense:
        return Dense(self.H.float())


class Shifted(Operator):
    """op + shift * I (damping on top of a curvature)."""

    def __init__(self, op: Operator, shift: float) -> None:
        self.op, self.shift = op, shift
        self.p, self.dtype, self.device = op.p, op.dtype, op.device
        self.name = f"{op.name} + {shift:g} I"

    @property
    def n(self) -> int:
        """Examples behind the wrapped operator (0 if it is not data-backed)."""
        return getattr(self.op, "n", 0)

    def matmat(self, V: Tensor) -> Tensor:
        return self.op.matmat(V) + self.shift * V

    def subset(self, index: Tensor) -> Shifted:
        """The wrapped operator on a subset of its examples, with the same shift."""
        return Shifted(self.op.subset(index), self.shift)

    def in_float32(self) -> Shifted | None:
        inner = self.op.in_float32()
        return None if inner is None else Shifted(inner, self.shift)

    def dense_footprint(self) -> dict[str, int]:
        return self.op.dense_footprint()

    def to_dense(self, block: int = 256) -> Tensor:
        H = self.op.to_dense(block).clone()
        H.diagonal().add_(self.shift)
        return H


class Hessian(Operator):
    """H = (1/n) sum_i grad^2 L(z_i, theta_hat) + diag(l2) over the data (X, y).

    l2 is obj.l2: a float (l2 * I) or a (p,) vector of per-parameter weight decays.

    Matrix-free: each product is a pass over the data in chunks of
    `batch_size` examples (forward-over-reverse, vectorised over the rows).
    """

    name = "hessian"

    def __init__(self, obj: Objective, X: Tensor, y: Tensor, batch_size: int = 1024) -> None:
        self.obj, self.X, self.y, self.batch_size = obj, X, y, batch_size
        self.p, self.dtype, self.device = obj.p, obj.dtype, obj.device

    @property
    def n(self) -> int:
        return self.X.shape[0]

    def matmat(self, V: Tensor) -> Tensor:
        out = self.obj.l2 * V
        for rows in batches(self.n, self.batch_size):
            out.add_(self._data_product(V, rows), alpha=1 / self.n)
        return out

    def _data_product(self, V: Tensor, rows: slice) -> Tensor:
        """The data part of the examples `rows`, summed (no 1/n, no l2), times each row of V: (k, p)."""
        return self.obj.data_hvp(V, self.X[rows], self.y[rows])

    def subset(self, index: Tensor) -> Hessian:
        """The same curvature over the examples `index` only (mean over them, same l2)."""
        return type(self)(self.obj, self.X[index], self.y[index], self.batch_size)

    def in_float32(self) -> Hessian:
        """A copy whose products run in float32: the parameters, buffers, l2 and floating inputs and targets
        cast (integer inputs, e.g. token ids, kept)."""
        out = copy.copy(self)
        out.obj, out.dtype = self.obj.to(torch.float32), torch.float32
        out.X, out.y = (t.float() if t.is_floating_point() else t for t in (self.X, self.y))
        return out


LAMBDA_CACHE_BYTES = 64 * 2**20  # output Hessians (with their outputs and targets) kept between products up to this


class GaussNewton(Hessian):
    """G = (1/n) sum_i J_i^T Lambda_i J_i + diag(l2): the generalised Gauss-Newton matrix.

    J_i = d f(x_i) / d theta (outputs by parameters), Lambda_i = d^2 L / d f^2.
    Its data part is positive semi-definite whenever the loss is convex in
    the outputs, so G is positive definite when every l2 > 0, whatever the network.
    """

    name = "gauss-newton"

    def __init__(self, obj: Objective, X: Tensor, y: Tensor, batch_size: int = 1024, *, check: bool = True) -> None:
        super().__init__(obj, X, y, batch_size)
        if check:  # a subset's model was checked with the whole operator
            check_tensor_outputs(obj, X, "curvature='gauss-newton'")
        self._lams: dict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = {}  # batch -> (outputs, targets, Lambda_i)

    def subset(self, index: Tensor) -> GaussNewton:
        """The same curvature over the examples `index` only (mean over them, same l2)."""
        return type(self)(self.obj, self.X[index], self.y[index], self.batch_size, check=False)

    def in_float32(self) -> GaussNewton:
        out = super().in_float32()
        out._lams = {}  # its own, in float32
        return out

    def _data_product(self, V: Tensor, rows: slice) -> Tensor:
        obj, X = self.obj, self.X[rows]
        f = lambda theta: obj.outputs(theta, X)  # noqa: E731
        F0, pullback = vjp(f, obj.theta)
        JV = vmap(lambda v: jvp(f, (obj.theta,), (v,))[1])(V)  # (k, b, *out)
        b, m = F0.shape[0], F0[0].numel()
        Lam = self._output_hessians(F0, rows)
        U = torch.einsum("bcm,kbm->kbc", Lam, JV.reshape(V.shape[0], b, m)).reshape(JV.shape)
        return vmap(pullback)(U)[0]

    def _output_hessians(self, F0: Tensor, rows: slice) -> Tensor:
        """Lambda_i (b, m, m) of the examples `rows` with outputs F0. Lambda_i is a function of the outputs and
        targets only, so it is kept with them and reused while both are unchanged (whatever changed the model:
        theta, frozen weights, buffers), up to LAMBDA_CACHE_BYTES in all; recomputing costs most, relatively, in
        products with few vectors."""
        y, key = self.y[rows], (rows.start, rows.stop)
        kept = self._lams.get(key)
        if kept is not None and torch.equal(kept[0], F0) and torch.equal(kept[1], y):
            return kept[2]
        Lam = output_hessians(self.obj.loss_fn, F0, y)
        held = sum(t.numel() * t.element_size() for entry in self._lams.values() for t in entry)
        size = (F0.numel() + Lam.numel()) * Lam.element_size() + y.numel() * y.element_size()
        if kept is not None or held + size <= LAMBDA_CACHE_BYTES:
            self._lams[key] = (F0.detach().clone(), y.clone(), Lam)
        return Lam

    def _jacobian_rows(self) -> tuple[int, int]:
        """Outputs per example m, and the examples whose output Jacobians (m, p) to_dense holds at once (the
        chunk is at most 2^25 numbers, and at least one example)."""
        with torch.no_grad():
            m = self.obj.outputs(self.obj.theta, self.X[:1]).numel() if self.n else 0
        return m, max(1, min(self.batch_size, self.n, 2**25 // max(m * self.p, 1)))

    def dense_footprint(self) -> dict[str, int]:
        m, rows = self._jacobian_rows()
        if m > self.p:
            return {}
        return {f"output Jacobians while formed ({rows} x {m} x {self.p}, x2)":
                2 * rows * m * self.p * torch.finfo(self.dtype).bits // 8}

    def to_dense(self, block: int = 256) -> Tensor:
        """The p x p matrix from per-example output Jacobians J_i (m, p): m reverse passes per example.

        Far cheaper than p products when the outputs per example m are few (m <= p);
        otherwise the products of Operator.to_dense.
        """
        obj = self.obj
        m, rows_per_chunk = self._jacobian_rows()
        if m > self.p:
            return super().to_dense(block)
        jacobians = vmap(jacrev(lambda theta, x: obj.outputs(theta, x.unsqueeze(0)).reshape(-1)), in_dims=(None, 0))
        G = torch.zeros(self.p, self.p, dtype=self.dtype, device=self.device)
        for rows in batches(self.n, rows_per_chunk):
            X, y = self.X[rows], self.y[rows]
            try:
                J = jacobians(obj.theta.detach(), X)  # (b, m, p)
            except RuntimeError as error:
                raise batching_failed("the per-example output Jacobians", error) from error
            Lam = output_hessians(obj.loss_fn, obj.outputs(obj.theta, X), y)  # (b, m, m)
            G += J.flatten(0, 1).T @ torch.einsum("bcm,bmp->bcp", Lam, J).flatten(0, 1)
        G /= self.n
        G.diagonal().add_(obj.l2)
        return (G + G.T) / 2


FLOAT32_SPREAD = 1e-4  # float32 products resolve eigenvalues to ~1e-7 of the largest: preconditioners built
# with them must invert nothing below this fraction of it (else they are rebuilt in float64)


def resolved_in_float32(smallest: float, largest: float) -> bool:
    """Whether eigenvalues down to `smallest` stand clear of float32 rounding next to `largest`."""
    return smallest >= FLOAT32_SPREAD * largest


def in_float32(op: Operator) -> Operator:
    """op's float32 form where op is float64 and has one that runs (a probe product on this process's own data,
    agreed by every process), else op itself.

    For building preconditioners and taking refine's steps: float32 products are cheaper, and a preconditioner's
    rounding (relative 1e-7) changes only the space a Krylov solve searches, not the system it solves, as long
    as the eigenvalues it inverts stay above FLOAT32_SPREAD of the largest (resolved_in_float32: callers check).
    """
    from .dist import all_sum, world  # dist builds on this module

    if op.dtype != torch.float64:
        return op
    try:
        low = op.in_float32()
        local = low
        while hasattr(local, "op"):  # damping and the all-reduce wrap the data's own operator: probe that alone
            local = local.op
        if low is None:
            works = False
        else:
            probe = local.matmat(torch.ones(1, op.p, dtype=torch.float32, device=op.device))
            works = probe.dtype == torch.float32 and bool(torch.isfinite(probe).all())
    except Exception:  # noqa: BLE001 -- whatever a model or loss raises in float32, the float64 form stays
        low, works = None, False
    if world()[1] > 1:  # one answer for all processes, or their products would not line up
        works = bool(all_sum(torch.tensor([0.0 if works else 1.0], device=op.device)).item() == 0)
    return low if works else op


def built_in_float32(op: Operator, build: Callable[[Operator], T], extremes: Callable[[T], tuple[float, float]]
                     ) -> tuple[T, Operator]:
    """build(in_float32(op)), built again as build(op) where the float32 form was taken but the smallest and
    largest eigenvalue the result inverts, extremes(result), are not resolved_in_float32; with the form built
    with (op itself, or its float32 form)."""
    low = in_float32(op)
    out = build(low)
    if low is not op and not resolved_in_float32(*extremes(out)):
        return build(op), op
    return out, low


def damping_in(op: Operator) -> float:
    """The damping op holds: the shifts of its Shifted wrappers (outside any other wrapper)."""
    shift = 0.0
    while isinstance(op, Shifted):
        shift, op = shift + op.shift, op.op
    return shift


def damping_needed(op: Operator, low: float) -> float:
    """The damping that makes op positive definite, given low, the smallest eigenvalue of op itself (found or
    estimated): the damping it holds minus low."""
    return max(damping_in(op) - low, 0.0)


def batching_failed(what: str, error: RuntimeError) -> InputError:
    """An InputError for a torch.func.vmap that failed inside the model, with the way around it."""
    return InputError(f"{what} (torch.func.vmap, one example as a batch of one) failed inside the model: {error}. "
                      "A layer's batching rule in PyTorch can fail where a plain forward works (e.g. nn.PReLU with "
                      "several channels); solver='cg' needs only curvature products and avoids this step")


def check_tensor_outputs(obj: Objective, X: Tensor, who: str) -> None:
    """InputError unless the model returns one tensor for inputs X, which a factorisation through the outputs
    (J^T Lambda J) needs; one forward pass on one example."""
    if not X.shape[0]:
        return
    with torch.no_grad():
        out = obj.outputs(obj.theta, X[:1])
    if not isinstance(out, Tensor):
        raise InputError(f"{who} needs a model that returns one tensor (the loss is factored through the outputs); "
                         f"this model returns a {type(out).__name__}. Return one tensor (e.g. torch.cat of the heads, "
                         "split again in loss_fn), or use curvature='hessian' with solver='exact', 'cg' or 'lissa'")


def output_hessians(loss_fn, F: Tensor, y: Tensor) -> Tensor:
    """Lambda_i = d^2 L(f_i, y_i) / d f_i^2 for outputs F (b, *out) -> (b, m, m), m = outputs per example, with
    negative eigenvalues clipped to 0: the Gauss-Newton matrix stays positive semi-definite for a loss that is
    not convex in the outputs (e.g. log(1 + r^2)); a convex loss's Lambda_i is unchanged up to rounding."""
    b, m = F.shape[0], F[0].numel()
    one = lambda fi, yi: loss_fn(fi.view(1, *F.shape[1:]), yi.unsqueeze(0)).squeeze(0)  # noqa: E731
    return psd_part(vmap(hessian(one))(F.detach().reshape(b, m), y).reshape(b, m, m))


def psd_part(Lam: Tensor) -> Tensor:
    """Each symmetric Lam_i (b, m, m) with its negative eigenvalues set to 0. Matrices that are diagonally
    dominant with a non-negative diagonal are PSD already (Gershgorin) and returned as they are, which spares
    the eigendecompositions for the usual losses (cross-entropy's diag(p) - p p^T is, at equality). Each row
    may fall short by the rounding of its own sum, 2 m eps x sum_j |Lam_ij|, so a negative curvature larger
    than that, relative to its own row, is always clipped."""
    diag = Lam.diagonal(dim1=1, dim2=2)
    row = Lam.abs().sum(2)
    slack = 2 * Lam.shape[1] * torch.finfo(Lam.dtype).eps * row
    dominant = ((diag >= -slack) & (2 * diag - row >= -slack)).all(1)  # diag_i - sum_{j != i} |Lam_ij|
    if bool(dominant.all()):
        return Lam
    out = Lam.clone()
    e, U = torch.linalg.eigh((Lam[~dominant] + Lam[~dominant].transpose(1, 2)) / 2)
    out[~dominant] = (U * e.clamp_min(0).unsqueeze(1)) @ U.transpose(1, 2)
    return out
