"""Fit once, then influence scores for any test points (Koh & Liang 2017; MATH.md)."""

from __future__ import annotations

import contextlib
import copy
import sys
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import dist
from .errors import CurvatureError, InputError, NotFittedError, warn
from .grads import directional_pays, iter_directional, iter_grads, stack_grads, sum_grad
from .inputs import batches, to_tensors
from .linear import LinearHessian, check_curvature, curvature_operator, make_objective
from .objective import L2, LossFn, Objective, check_l2, describe_l2, is_integer, nonnegative_number
from .operators import Operator
from .solvers import CG, EKFAC, KFAC, Arnoldi, Exact, LiSSA, SolveInfo
from .budget import GRAD_COPIES, PRODUCT_COPIES
from .solvers import krylov
from .solvers.base import itemsize
from .solvers.spectrum import BOTTOM_ITEM

GAUSS_NEWTON_ADVICE = "or use curvature='gauss-newton'"  # the solvers' advice beside damping
GAUSS_NEWTON_IN_USE = ("or a larger l2: the Gauss-Newton matrix in use is positive semi-definite, so l2 + damping > 0 "
                       "makes it definite")

SOLVERS = {"exact": Exact, "cg": CG, "lissa": LiSSA, "arnoldi": Arnoldi, "kfac": KFAC, "ekfac": EKFAC}
Solver = Exact | CG | LiSSA | Arnoldi | EKFAC


def make_solver(solver: str | Solver) -> Solver:
    """A solver instance from a name (a key of SOLVERS, default settings) or a configured instance."""
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise InputError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)} "
                             "or pass a configured instance such as infl.CG(tol=1e-8)")
        return SOLVERS[solver]()
    if not (hasattr(solver, "fit") and hasattr(solver, "solve")):
        raise InputError(f"solver must be a name or an object with fit(op) and solve(B), got {type(solver).__name__}")
    return copy.deepcopy(solver)  # fitted state belongs to this Influence, not to the caller's object


TEST_GROUP_BYTES = 2**30  # test points' working set in one solve (PRODUCT_COPIES x p numbers per point)


def rows_per_test_group(p: int, itemsize: int, batch_size: int) -> int:
    """Test points solved at once (Influence._test_groups): as many as TEST_GROUP_BYTES of working set hold
    (PRODUCT_COPIES x p numbers each), at least batch_size; from krylov.REFINE_BLOCK on, rounded down to a
    multiple of it, so that a refined solver's block CG groups the rows as one solve of all would."""
    rows = max(batch_size, TEST_GROUP_BYTES // (p * itemsize * PRODUCT_COPIES))
    return rows if rows < krylov.REFINE_BLOCK else rows // krylov.REFINE_BLOCK * krylov.REFINE_BLOCK


def merge_infos(infos: list[SolveInfo], sizes: list[int]) -> SolveInfo:
    """One SolveInfo for solves made in chunks of sizes[j] right-hand sides: the most iterations; residuals of
    chunks not measured are nan (None if none was measured); converged and the note judged by the measured
    chunks (a chunk solved unchecked, see _unchecked, says nothing either way), by all if none was."""
    measured = [i for i in infos if i.residual is not None]
    residual = None if not measured else torch.cat(
        [i.residual if i.residual is not None else measured[0].residual.new_full((k,), float("nan"))
         for i, k in zip(infos, sizes)])
    judged = measured or infos
    note = judged[0].note
    if len(measured) > 1:  # each note describes its own chunk: add the worst over all
        note += (f"; over all {len(measured)} measured batches: relative residual median "
                 f"{float(residual.nanmedian()):.3g}, max {float(residual[~residual.isnan()].max()):.3g}")
    return SolveInfo(infos[0].method, max(i.iterations for i in infos), residual,
                     all(i.converged for i in judged), note)


def _warn_zero_gradients(zero: list[int], dtype: torch.dtype) -> None:
    """Warn about the test points `zero` whose loss gradient is exactly 0: every training point's score for them is
    0, a tie that ranks nothing."""
    if zero:
        name = str(dtype).removeprefix("torch.")
        rounding = (f". If the loss is not flat there: in {name} a very confident prediction's gradient can round to "
                    "0 (as torch.func computes it); compute in float64 (model.double() and float64 data)"
                    if dtype != torch.float64 else "")
        warn(f"the gradient of the test loss is exactly 0 for {len(zero)} test point(s) (the first: {zero[:5]}), so "
             f"every training point's score for them is 0{rounding}")


@contextlib.contextmanager
def _unchecked(solver: Any, skip: bool) -> Iterator[None]:
    """While skip: the solver measures no residuals (its `check` is 0), so batched solves measure one sample."""
    check = getattr(solver, "check", None)
    if skip and check:
        solver.check = 0
    try:
        yield
    finally:
        if check is not None:
            solver.check = check


def _check_number(name: str, value: float) -> float:
    """A finite number >= 0 (Python or NumPy scalar, one-element array or tensor; not a bool) as a float."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(())
    number = nonnegative_number(value)
    if number is None:
        raise InputError(f"{name} must be a finite number >= 0 (not a bool or an array), got {value!r}")
    return number


def _is_flag(value: Any) -> bool:
    """Whether value reads as True or False: a bool, NumPy bool, 0 / 1, or such a one-element tensor (not a
    string, where "no" would count as True)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    return isinstance(value, (bool, np.bool_)) or (is_integer(value) and value in (0, 1))


def _is_inf(value: Any) -> bool:
    """Whether value is +inf (a Python, NumPy or one-element tensor number)."""
    try:
        return float(value) == float("inf") and not isinstance(value, str)
    except (TypeError, ValueError):
        return False


class Influence:
    """Influence of upweighting each training point, for a trained model.

    H = (1/n) sum_i grad^2 L(z_i, theta_hat) + diag(l2), plus damping * I on
    top (for non-convex models); gradients are of the unregularised
    per-example loss. Signs and scalings follow MATH.md.

    Args:
        model: trained torch module, left unchanged (never modified or switched mode).
        loss_fn: loss_fn(outputs, targets) -> per-example losses (b,).
        l2: weight decay the model was trained with (part of H): a float for
            every trainable parameter, or {parameter name: l2} (names as in
            model.named_parameters(); each value a number or a tensor shaped
            like the parameter; trainable parameters not named get 0), e.g.
            {"weight": 0.01} for an unpenalised bias.
        damping: extra multiple of I added to H (not part of the objective).
        solver: 'exact', 'cg', 'lissa', 'arnoldi', 'kfac', 'ekfac' or a configured instance
            (copied: its fitted state belongs to this Influence).
        curvature: 'hessian' (of R), or 'gauss-newton'
            ((1/n) sum_i J_i^T Lambda_i J_i + l2 I, PSD by construction: for
            non-convex models or ones not trained to convergence). The same
            matrix when outputs are affine in theta.
        batch_size: examples per vectorised gradient chunk; bounds memory.
        keep_train_grads: hold all n x p training gradients in memory after
            fit (faster repeated queries) instead of recomputing them per query.
        stationarity_tol: warn when ||grad R(theta_hat)|| exceeds this.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, *, l2: L2 = 0.0, damping: float = 0.0,
                 solver: str | Solver = "exact", curvature: str = "hessian", batch_size: int = 512,
                 keep_train_grads: bool = False, stationarity_tol: float = 1e-3) -> None:
        if not (is_integer(batch_size) and batch_size >= 1):
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        batch_size = int(batch_size)
        self.model, self.loss_fn = model, loss_fn
        self.l2, self.damping = check_l2(l2), _check_number("damping", damping)
        self.solver = make_solver(solver)
        check_curvature(curvature)
        self.curvature = curvature
        if not _is_flag(keep_train_grads):
            raise InputError(f"keep_train_grads must be True or False, got {keep_train_grads!r}")
        tol = nonnegative_number(stationarity_tol)
        if tol is None and not _is_inf(stationarity_tol):
            raise InputError(f"stationarity_tol must be a number >= 0 (float('inf') turns the check off), got "
                             f"{stationarity_tol!r}")
        self.batch_size, self.keep_train_grads = batch_size, bool(keep_train_grads)
        self.stationarity_tol = float("inf") if tol is None else tol

    # ----------------------------------------------------------------- fit
    def _validated(self, train: Any) -> tuple[Objective, Tensor, Tensor]:
        """The objective and the training tensors (X, y), validated; nothing is stored."""
        trainable = [p for p in self.model.parameters() if p.requires_grad] if isinstance(self.model, nn.Module) else []
        if not trainable:
            raise InputError("the model has no parameters with requires_grad=True; nothing to differentiate")
        X, y = to_tensors(train, trainable[0].dtype, trainable[0].device, "train")
        obj = make_objective(self.model, self.loss_fn, self.l2, probe=X[:2])
        obj.check_loss(X, y)
        return obj, X, y

    def _read(self, train: Any) -> None:
        """Validate the model and training data; set objective_, X_train_, y_train_ and this rank's shard_."""
        self.__dict__.pop("curvature_", None)  # a failed re-fit must not leave the old solver usable
        self.objective_, self.X_train_, self.y_train_ = self._validated(train)
        dist.check_same_data(self.X_train_, self.y_train_)
        self.shard_ = dist.shard(self.X_train_.shape[0])

    def _operator(self) -> Operator:
        """The damped curvature over all ranks' data (products all-reduced under torch.distributed)."""
        return self._operator_on(self.objective_, self.X_train_, self.y_train_, self.shard_)

    def _operator_on(self, obj: Objective, X: Tensor, y: Tensor, sh: slice) -> Operator:
        op = curvature_operator(obj, X[sh], y[sh], self.batch_size, self.curvature)
        return dist.all_reduced(op, X.shape[0], sh.start) + self.damping

    def plan(self, train: Any) -> dict[str, int]:
        """Bytes that fit and the queries will hold, by item, known before any pass over the data.

        The solver's own items (solver.footprint), the gradient chunk of
        batch_size rows, and the n x p training gradients if kept. A fitted Influence stays as it was.
        """
        obj, X, y = self._validated(train)
        op = self._operator_on(obj, X, y, dist.shard(X.shape[0]))
        s, n = itemsize(op), X.shape[0]
        out = dict(self.solver.footprint(op))
        if self._solver_floor(op, obj) is not None:  # the solver runs no smallest-eigenvalue estimate
            out = {item: size for item, size in out.items() if not item.startswith(BOTTOM_ITEM)}
        out[f"gradient chunk ({min(self.batch_size, n)} x {op.p}, x{GRAD_COPIES})"] = \
            min(self.batch_size, n) * op.p * s * GRAD_COPIES
        rows = min(self.batch_size, 256)
        group = rows_per_test_group(op.p, s, self.batch_size)
        out[f"curvature products on {rows} right-hand sides ({rows} x {op.p}, x{PRODUCT_COPIES}; more test points "
            f"at once hold more, up to a group of {group})"] = rows * op.p * s * PRODUCT_COPIES
        if self.keep_train_grads:
            out[f"training gradients kept ({n} x {op.p})"] = n * op.p * s
        return out

    def prepare(self, train: Any) -> Influence:
        """Read the training data, check stationarity and build the curvature operator `operator_` (no solver work).

        Under torch.distributed each rank keeps its shard `shard_` of the rows
        for gradients and curvature; sums are all-reduced (infl.dist).
        """
        self._read(train)
        return self._prepare_read()

    def _prepare_read(self) -> Influence:
        """prepare's work on the data _read has set: the stationarity check and the curvature operator."""
        obj, X, y, sh = self.objective_, self.X_train_, self.y_train_, self.shard_
        total = dist.all_sum(sum_grad(obj, X[sh], y[sh], self.batch_size, sh.start))
        self.grad_norm_ = float((total / X.shape[0] + obj.l2 * obj.theta).norm())
        if self.grad_norm_ > self.stationarity_tol:
            warn(
                f"the model is not at a stationary point of the training objective: ||grad R|| = "
                f"{self.grad_norm_:.3g} (l2={describe_l2(self.l2)}). Influence assumes theta_hat minimises R; train "
                "longer, check that l2 matches the training weight decay, or add damping")
        self.operator_: Operator = self._operator()
        return self

    def fit(self, train: Any) -> Influence:
        """Read the training data, build the curvature operator and prepare the solver."""
        self.prepare(train)
        op, obj = self.operator_, self.objective_
        with self._curvature_advice():
            self._fit_solver(op, obj)
        self.curvature_: Operator = op
        sh = self.shard_
        self.train_grads_ = (stack_grads(self.objective_, self.X_train_[sh], self.y_train_[sh], self.batch_size, sh.start)
                             if self.keep_train_grads else None)
        return self

    def _fit_solver(self, op: Operator, obj: Objective) -> None:
        if isinstance(self.solver, (LiSSA, Arnoldi, EKFAC)):
            self.solver.fit(op, floor=self._solver_floor(op, obj))
        else:
            self.solver.fit(op)

    def _solver_floor(self, op: Operator, obj: Objective) -> float | None:
        """The lower bound on op's eigenvalues the solver is given (None: unknown, so LiSSA, Arnoldi and refined
        EK-FAC estimate one): l2 + damping (_floor); for EK-FAC, which needs to know only that op is positive
        semi-definite, 0 wherever it is."""
        if isinstance(self.solver, EKFAC):
            return 0.0 if self._psd(op) else None
        return self._floor(op, obj)

    def _psd(self, op: Operator) -> bool:
        """Whether the data part of op is positive semi-definite: Gauss-Newton, or a convex linear model."""
        return self.curvature == "gauss-newton" or _convex_linear(op)

    def _floor(self, op: Operator, obj: Objective) -> float | None:
        """A lower bound on op's eigenvalues, l2 + damping, where the data part is positive semi-definite; None
        where unknown (solvers that need one then estimate it)."""
        floor = obj.l2_min + self.damping  # 0 (e.g. an unpenalised intercept) bounds nothing: estimate then
        return floor if self._psd(op) and floor > 0 else None

    @contextlib.contextmanager
    def _curvature_advice(self) -> Iterator[None]:
        """A solver's CurvatureError without the advice to use Gauss-Newton when it is the curvature in use; a
        model without forward-mode AD (curvature products use it) named with the way around it."""
        try:
            yield
        except NotImplementedError as exc:
            dtype = self.objective_.dtype
            if dtype in (torch.float16, torch.bfloat16):
                raise InputError(f"the model is in {str(dtype).removeprefix('torch.')}, which the curvature's linear "
                                 f"algebra does not support here ({exc}); use a float32 or float64 copy: "
                                 "infl.Influence(copy.deepcopy(model).float(), ...)") from exc
            raise InputError(f"the curvature products need forward-mode AD, which an operation in this model lacks "
                             f"({exc}); use curvature='gauss-newton' with solver='exact' (the other solvers, and "
                             "EK-FAC's residual check, take curvature products), or freeze the layer "
                             "(requires_grad=False)") from exc
        except CurvatureError as error:
            if self.curvature != "gauss-newton" or GAUSS_NEWTON_ADVICE not in str(error):
                raise
            raise CurvatureError(str(error).replace(GAUSS_NEWTON_ADVICE, GAUSS_NEWTON_IN_USE)) from error

    def _solve(self, B: Tensor) -> Tensor:
        with self._curvature_advice():
            X, self.info_ = self.solver.solve(B)
        return X

    def _fitted(self) -> None:
        if not hasattr(self, "curvature_"):
            raise NotFittedError("call fit(train) before asking for influence")

    @property
    def n_train(self) -> int:
        self._fitted()
        return self.X_train_.shape[0]

    def _train_grads(self) -> Any:
        """Iterate (rows, grads (b, p)) over this rank's training rows (all of them in one process),
        rows counted from the start of the shard; from memory if kept."""
        sh = self.shard_
        if self.train_grads_ is not None:
            return ((r, self.train_grads_[r]) for r in batches(sh.stop - sh.start, self.batch_size))
        return iter_grads(self.objective_, self.X_train_[sh], self.y_train_[sh], self.batch_size, sh.start)

    def test_tensors(self, test: Any) -> tuple[Tensor, Tensor]:
        """Test data as validated (X, y) tensors on the model's dtype and device."""
        self._fitted()
        X, y = to_tensors(test, self.objective_.dtype, self.objective_.device, "test")
        if X.shape[1:] != self.X_train_.shape[1:]:
            raise InputError(f"test inputs have per-example shape {tuple(X.shape[1:])} but the training inputs have "
                             f"{tuple(self.X_train_.shape[1:])}; give test data shaped like the training data")
        try:
            self.objective_.check_loss(X, y)
        except InputError as error:  # targets shaped unlike training's (soft labels may be fine) are a likely cause
            if y.shape[1:] == self.y_train_.shape[1:]:
                raise
            raise InputError(f"{error} (note: the test targets have per-example shape {tuple(y.shape[1:])} but the "
                             f"training targets have {tuple(self.y_train_.shape[1:])}; a loss that broadcasts them "
                             "gives wrong losses: give targets shaped like the training targets)") from error
        return X, y

    # ------------------------------------------------------------- queries
    def test_grads(self, test: Any) -> Tensor:
        """grad_theta L(z_test, theta_hat) for each test point, (m, p)."""
        X, y = self.test_tensors(test)
        return stack_grads(self.objective_, X, y, self.batch_size)

    def _quad(self, G: Tensor) -> Tensor:
        """g^T H^-1 g for each row g of G (k, p): the solver's quad() where it has one (e.g. a half
        Cholesky solve), else from a full solve."""
        if hasattr(self.solver, "quad"):
            q, self.info_ = self.solver.quad(G)
            return q
        return (self._solve(G) * G).sum(1)

    def s_test(self, test: Any) -> Tensor:
        """s_test = H^{-1} grad L(z_test) for each test point, (m, p). Solver details in self.info_."""
        X, y = self.test_tensors(test)
        obj = self.objective_
        out = torch.empty(X.shape[0], obj.p, dtype=obj.dtype, device=obj.device)
        for rows, T in self._solved_groups(X, y):
            out[rows] = T
        return out

    def scores(self, test: Any) -> Tensor:
        """I_up,loss(z_i, z_test) = -s_test . grad L(z_i), shape (m, n_train).

        Positive: upweighting z_i raises the test loss (harmful); negative:
        helpful. Removing z_i changes the test loss by about -score / n.
        Test points are solved in groups (_test_groups), one pass over the
        training gradients per group.
        """
        X, y = self.test_tensors(test)
        sh = self.shard_
        out = torch.empty(X.shape[0], sh.stop - sh.start, dtype=self.objective_.dtype, device=self.objective_.device)
        for rows, T in self._solved_groups(X, y):
            for cols, block in self._train_products(T):
                out[rows, cols] = -block
        return dist.gather_columns(out, self.n_train)

    def _test_groups(self, m: int) -> Iterator[slice]:
        """Test rows solved together (rows_per_test_group): one group unless m x p is large."""
        obj = self.objective_
        return batches(m, rows_per_test_group(obj.p, obj.theta.element_size(), self.batch_size))

    def _solved_groups(self, X: Tensor, y: Tensor) -> Iterator[tuple[slice, Tensor]]:
        """(rows, H^{-1} grad L(z) for the test rows) per group of _test_groups; self.info_ covers the groups
        solved so far (an approximate solver's residuals measured on the first group only)."""
        infos, sizes, zero = [], [], []
        for rows in self._test_groups(X.shape[0]):
            G = stack_grads(self.objective_, X[rows], y[rows], self.batch_size)
            zero += ((G == 0).all(1).nonzero().squeeze(1) + rows.start).tolist()
            if rows.stop == X.shape[0]:  # warned once, before the last group's solve
                _warn_zero_gradients(zero, G.dtype)
            with _unchecked(self.solver, bool(infos)):
                T = self._solve(G)
            infos.append(self.info_)
            sizes.append(G.shape[0])
            self.info_ = merge_infos(infos, sizes)
            yield rows, T

    def _train_products(self, T: Tensor) -> Any:
        """Iterate (rows, T @ grad L(z_i)^T for i in rows), each (k, b), over this rank's training rows: from
        kept gradients, by forward-mode products where cheaper (grads.directional_pays), else from gradients."""
        sh = self.shard_
        X, y = self.X_train_[sh], self.y_train_[sh]
        if self.train_grads_ is None and directional_pays(self.objective_, X, y, T.shape[0]):
            return iter_directional(self.objective_, T, X, y, self.batch_size, sh.start)
        return ((rows, T @ G.T) for rows, G in self._train_grads())

    def self_influence(self, progress: bool = False) -> Tensor:
        """I_up,loss(z_i, z_i) = -grad L(z_i)^T H^{-1} grad L(z_i) for each training point, (n_train,).

        Non-positive for a positive definite H; large magnitude marks points
        the model finds surprising (label checking, MATH.md). One solve per
        training point (batch_size at a time): with an iterative solver this
        is the longest query; progress=True shows a bar over the batches on stderr.
        """
        self._fitted()
        out = torch.empty(self.n_train, dtype=self.objective_.dtype, device=self.objective_.device)
        # solves of a shared curvature are collective: under torch.distributed every rank solves every batch
        grads = self._train_grads() if dist.world()[1] == 1 else \
            iter_grads(self.objective_, self.X_train_, self.y_train_, self.batch_size)
        infos, sizes = [], []
        bar = tqdm(total=self.n_train, desc="self-influence", unit="point", file=sys.stderr,
                   disable=not (progress and dist.world()[0] == 0))
        for rows, G in grads:
            with _unchecked(self.solver, bool(infos)):  # residuals sampled on the first batch, not on every one
                out[rows] = -self._quad(G)
            infos.append(self.info_)
            sizes.append(G.shape[0])
            bar.update(G.shape[0])
        bar.close()
        self.info_ = merge_infos(infos, sizes)
        return out

    def up_params(self, indices: Sequence[int] | Tensor) -> Tensor:
        """I_up,params(z_i) = -H^{-1} grad L(z_i) for the given training indices, (k, p).

        p in model.parameters() order (trainable ones only). Removing z_i
        moves theta by about -I_up,params / n.
        """
        index = self._train_index(indices)
        obj = self.objective_
        if not index.numel():
            return torch.empty(0, obj.p, dtype=obj.dtype, device=obj.device)
        return -self._solve(obj.per_example_grads(self.X_train_[index], self.y_train_[index]))

    def _train_index(self, indices: Sequence[int] | Tensor) -> Tensor:
        self._fitted()
        given = np.asarray(indices.cpu() if isinstance(indices, Tensor) else indices)
        if sum(size > 1 for size in given.shape) > 1:  # a column of indices, as torch.nonzero gives, is fine
            raise InputError(f"training indices must be one-dimensional (a list, or a mask over the training "
                             f"points), got shape {given.shape}; flatten them if that is what you mean")
        if given.size and given.dtype.kind not in "iufcb":
            raise InputError(f"training indices must be integers (or a boolean mask), got {given.dtype} values "
                             f"{given.reshape(-1)[:5].tolist()}")
        index = torch.as_tensor(given)
        if index.numel() == 0:
            index = index.to(torch.long)
        if index.dtype == torch.bool:
            if index.shape != (self.n_train,):
                raise InputError(f"a boolean mask of training points must have one entry per training point "
                                 f"({self.n_train}), got shape {tuple(index.shape)}")
            index = torch.nonzero(index).reshape(-1)
        if index.is_floating_point() or index.is_complex():
            raise InputError(f"training indices must be integers (or a boolean mask), got dtype {index.dtype}; "
                             "convert them with .long() / astype(int) after checking they are whole numbers")
        index = index.to(torch.long).reshape(-1)
        bad = index[(index < -self.n_train) | (index >= self.n_train)]
        if bad.numel():
            raise InputError(f"training indices {bad.tolist()[:5]} are out of range for {self.n_train} training points")
        return index

    def pert_loss(self, test: Any, train_indices: Sequence[int] | Tensor) -> Tensor:
        """I_pert,loss(z_i, z_test) = -grad_x [s_test . grad_theta L((x, y_i), theta_hat)] at x = x_i.

        Shape (m, k, *x_shape) for m test points and k training indices: the
        direction in which moving x_i raises the test loss fastest. Moving x_i
        by delta changes the retrained test loss by about (1/n) I_pert,loss . delta.
        Training points are taken batch_size at a time (memory: batch_size x p).
        """
        index = self._train_index(train_indices)
        if not self.X_train_.is_floating_point():
            raise InputError(f"I_pert,loss moves training inputs continuously, but they are {self.X_train_.dtype} "
                             "(e.g. token ids); perturb a continuous input instead, such as an embedding output "
                             "fed to the rest of the model")
        X, y = self.X_train_[index], self.y_train_[index]
        if not index.numel():
            return X.new_empty(self.test_tensors(test)[0].shape[0], *X.shape)
        T = self.s_test(test)
        out = X.new_empty(T.shape[0], *X.shape)
        for rows in batches(X.shape[0], self.batch_size):
            for j, t in enumerate(T):
                out[j, rows] = -self.objective_.input_grads(X[rows], y[rows], t)
        return out

    @property
    def info(self) -> SolveInfo:
        """SolveInfo of the latest solve (iterations, residual, converged, note)."""
        if not hasattr(self, "info_"):
            raise NotFittedError("no solve has run yet; call scores(), s_test() or up_params() first")
        return self.info_


def _convex_linear(op: Operator) -> bool:
    """Whether op (damped or not) is a linear model's Hessian whose loss is convex in the outputs (every output
    Hessian Lambda_i positive semi-definite, checked on every process's rows), so l2 + damping bounds its spectrum;
    a loss such as log(1 + r^2) is not, and its Hessian can be indefinite even for a linear model."""
    while not isinstance(op, LinearHessian) and hasattr(op, "op"):
        op = op.op
    if not isinstance(op, LinearHessian):
        return False
    low = float(torch.linalg.eigvalsh(op.Lam).min()) if op.Lam.numel() else 0.0
    size = float(op.Lam.abs().max()) if op.Lam.numel() else 0.0
    return not dist.maximum(int(low < -100 * torch.finfo(op.Lam.dtype).eps * size))
