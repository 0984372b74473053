"""Retraining checks of influence: leave-one-out (the paper's own test, MATH.md) and the LDS.

Removing training point j (weight 0, the others keep 1/n) is the
epsilon = -1/n perturbation, so

    L(z_test, theta_hat_{-j}) - L(z_test, theta_hat) ~= -(1/n) * I_up,loss(z_j, z_test).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy import stats
from torch import Tensor
from torch.func import grad, vmap

from .errors import InflError, InputError, warn
from .influence import Influence, Solver
from .objective import is_integer
from .solvers import Exact
from .store import write_atomic
from .train import minimize, reachable_tol, weighted_risk


@dataclass(frozen=True)
class LeaveOneOut:
    """Predicted and actual test-loss changes from removing each of k training points, per test point.

    indices (k,); predicted, actual (m, k): predicted = -(1/n) I_up,loss,
    actual = retrained minus original test loss; pearson, spearman (m,).
    """

    indices: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    pearson: np.ndarray
    spearman: np.ndarray


def removal_weights(n: int, removed: Sequence[int], *, baseline: bool = False, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> Tensor:
    """Example weights (k, n) for retraining: every row 1/n, with row r's weight of removed[r] set to 0;
    baseline=True puts a first row with nothing removed (the full set) before them."""
    W = torch.full((len(removed) + baseline, n), 1.0 / n, dtype=dtype, device=device)
    W[torch.arange(baseline, len(W)), torch.as_tensor(removed, dtype=torch.long)] = 0
    return W


def retrain_without(inf: Influence, j: int, tol: float = 1e-10, max_iter: int = 1000) -> Tensor:
    """theta_hat_{-j}: argmin of R with point j's weight set to 0, by L-BFGS warm-started at theta_hat."""
    obj, X, y = inf.objective_, inf.X_train_, inf.y_train_
    w = removal_weights(X.shape[0], [j], dtype=obj.dtype, device=obj.device)[0]
    return minimize(obj, X, y, weights=w, theta0=obj.theta, tol=tol, max_iter=max_iter)


def retrain_all(inf: Influence, indices: Sequence[int], tol: float = 1e-10, max_iter: int = 50,
                done: Callable[[int], object] = lambda count: None) -> dict[int, Tensor]:
    """theta_hat_{-j} for every j in `indices`, all at once: {j: theta (p,)}.

    Warm-started at theta_hat, each row takes newton_steps until the largest entry
    of grad R_{-j} is <= tol: the fixed point is the exact minimiser, H only speeds
    the way there. Rows short of tol after max_iter (or diverging), or a curvature too
    large to factor, fall back to L-BFGS (retrain_without). done(count) reports progress.
    A model in a lower precision than float64 cannot reach tol = 1e-10: tol is raised to
    reachable_tol(dtype) there (3.5e-7 in float32).
    """
    tol = max(tol, reachable_tol(inf.objective_.dtype))
    solver = inf.solver if isinstance(inf.solver, Exact) else _try_exact(inf)
    pending, out = [int(j) for j in indices], {}
    if solver is not None:
        W = removal_weights(inf.n_train, pending, dtype=inf.objective_.dtype, device=inf.objective_.device)
        Theta, ok = newton_steps(inf, W, solver, tol=tol, max_iter=max_iter, done=done, warn_diverged=False)
        out.update({j: Theta[r] for r, j in enumerate(pending) if ok[r]})
        pending = [j for r, j in enumerate(pending) if not ok[r]]
    for j in pending:
        out[j] = retrain_without(inf, j, tol=tol)
        done(1)
    return out


DIVERGED = 1e3  # a retraining whose gradient grows this much is diverging


def newton_steps(inf: Influence, W: Tensor, solver: Solver, *, tol: float = 1e-10, max_iter: int = 50,
                 proximal: float = 0.0, done: Callable[[int], object] = lambda count: None,
                 warn_diverged: bool = True) -> tuple[Tensor, Tensor]:
    """Retrain from theta_hat on each row of example weights W (k, n): Theta (k, p), converged (k,) bool.

    Each row iterates theta <- theta - P^{-1} grad R_w(theta), R_w = sum_i w_i L(z_i, theta)
    + (l2/2)||theta||^2, with P the curvature `solver` was fitted on (fixed at theta_hat),
    until the largest entry of grad R_w is <= tol (converged) or after max_iter steps.
    proximal > 0 adds (proximal/2)||theta - theta_hat||^2 to R_w: the retraining that
    influence with damping = proximal approximates when theta_hat is not a minimum. With
    P fixed every row is a smooth function of its weights, so differences between rows are
    not blurred by line searches or adaptive step sizes. done(count) reports converged rows.
    With proximal > 0, fit `solver` on the curvature damped by proximal (damping=proximal), the
    Hessian of that objective; a row whose gradient grows DIVERGED-fold is stopped (not converged); rows
    diverged or out of steps warn unless warn_diverged=False. Use only the converged rows' Theta.
    """
    obj, X, y = inf.objective_, inf.X_train_, inf.y_train_
    start = obj.theta.detach()
    grads = vmap(grad(lambda theta, w: weighted_risk(obj, theta, X, y, w, inf.batch_size)
                      + 0.5 * proximal * (theta - start).square().sum()))
    Theta = start.expand(W.shape[0], -1).clone()
    converged = torch.zeros(W.shape[0], dtype=torch.bool)
    active, first, diverged = torch.arange(W.shape[0]), None, 0
    for step in range(max_iter + 1):
        G = grads(Theta[active], W[active])
        size = G.abs().amax(1).cpu()
        first = size if first is None else first
        ok, blown = size <= tol, ~(size <= DIVERGED * first[active])
        converged[active[ok]] = True
        done(int(ok.sum()))
        diverged += int(blown.sum())
        keep = ~(ok | blown)
        active, G = active[keep], G[keep]
        if not active.numel() or step == max_iter:
            break
        Theta[active] -= solver.solve(G)[0]
    short = int((~converged).sum()) - diverged  # neither converged nor stopped as diverging: out of steps
    if short and warn_diverged:
        warn(f"newton_steps: {short} of {W.shape[0]} retrainings did not reach tol = {tol:g} within max_iter = "
             f"{max_iter} steps (converged False; their Theta rows are not optima): raise max_iter, or retrain "
             "those rows with L-BFGS (infl.train.minimize)")
    if diverged and warn_diverged:
        warn(f"newton_steps: {diverged} of {W.shape[0]} retrainings diverged (gradient {DIVERGED:g}x its start) and "
             "were stopped (converged False; their Theta rows are not optima): fixed Newton steps overshoot when the "
             "solver's curvature is not the objective's at theta_hat (fit it there"
             + (f", with damping = proximal = {proximal:g}" if proximal else "")
             + "), or when it is but the objective is far from quadratic over the step (a nearly singular curvature"
             + (": raise proximal and damping together" if proximal else "") + "). Retrain those rows with L-BFGS "
             "(infl.train.minimize), as retrain_all does")
    return Theta, converged


def _try_exact(inf: Influence) -> Exact | None:
    try:
        return Exact().fit(inf.curvature_)
    except InflError:
        return None


def correlations(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(Pearson R, Spearman rho) of two 1-D arrays."""
    return float(stats.pearsonr(predicted, actual)[0]), float(stats.spearmanr(predicted, actual)[0])


def leave_one_out(inf: Influence, test: Any, train_indices: Sequence[int],
                  retrain: Callable[[Influence, Sequence[int]], dict[int, Tensor]] = retrain_all) -> LeaveOneOut:
    """Retrain without each training index and compare with the influence prediction.

    `retrain(inf, indices)` returns {j: theta_{-j}} for every j in indices (ints in
    0..n-1), each theta a flat parameter vector (p,) in inf.objective_.theta's order
    (a tensor or array; cast to the model's dtype); the default, retrain_all,
    is the exact convex protocol (warm start, tight convergence). Wrap it
    to add progress, or to retrain a non-convex model your own way. An entry
    under the key None, the same retraining on all points, is the baseline:
    `actual` is then measured from it, not from theta_hat, which removes the
    move that every retraining shares when theta_hat is not a minimum.
    """
    X, y = inf.test_tensors(test)
    index = (inf._train_index(train_indices) % inf.n_train).tolist()  # checked as up_params checks them
    repeated = sorted(j for j, times in Counter(index).items() if times > 1)
    if repeated:
        raise InputError(f"train_indices name training points {repeated[:5]} more than once; name each once")
    if len(index) < 3:
        raise InputError(f"leave_one_out needs at least 3 different training indices to correlate, got {len(index)}; "
                         "each costs one retrain")
    predicted = -inf.scores(test)[:, index].cpu().numpy() / inf.n_train
    obj = inf.objective_
    returned = retrain(inf, index)
    thetas = _retrained(returned, index, obj.theta)
    baseline = _retrained(returned, [None], obj.theta)[None] if None in returned else None  # a Mapping by now
    if baseline is None and inf.grad_norm_ > inf.stationarity_tol:
        warn(f"leave_one_out: theta_hat is not a minimum (||grad R|| = {inf.grad_norm_:.3g}), so a retraining "
             "without z_j also moves by what training left undone, and `actual` holds that shared move too (a "
             "shift per test point: the correlations keep, the values do not): train to convergence, or have "
             "retrain return the same retraining on all points under the key None, the baseline (e.g. "
             "newton_steps on removal_weights(n, indices, baseline=True) with proximal = the damping, README)")
    base = obj.losses(obj.theta if baseline is None else baseline, X, y).detach()
    actual = np.empty_like(predicted)
    for col, j in enumerate(index):
        actual[:, col] = (obj.losses(thetas[j], X, y).detach() - base).cpu().numpy()
    if not np.isfinite(actual).all():
        warn(f"leave_one_out: the retrained test losses of {int((~np.isfinite(actual).all(0)).sum())} of {len(index)} "
             "retrainings are NaN or inf (a diverged retraining?); their correlations are nan")
    pairs = [correlations(p, a) for p, a in zip(predicted, actual)]
    return LeaveOneOut(np.asarray(index), predicted, actual,
                       np.array([p for p, _ in pairs]), np.array([s for _, s in pairs]))


def _retrained(thetas: Any, index: list[int], theta_hat: Tensor) -> dict[int, Tensor]:
    """retrain's result checked and cast: {j: (p,) tensor in theta_hat's dtype and device} for every j in index;
    InputError naming the expected form otherwise."""
    form = (f"retrain must return {{j: theta}} for every training index j asked for, each theta a flat parameter "
            f"vector of {theta_hat.numel()} numbers (inf.objective_.theta's order)")
    if not isinstance(thetas, Mapping):
        raise InputError(f"{form}; got a {type(thetas).__name__}")
    missing = [j for j in index if j not in thetas]
    if missing:
        raise InputError(f"{form}; it has no entry for {missing[:5]} (keys: {list(thetas)[:5]})")
    out = {}
    for j in index:
        theta = thetas[j]
        try:
            theta = torch.as_tensor(theta.detach() if isinstance(theta, Tensor) else np.asarray(theta))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{form}; the entry for {j} is a {type(theta).__name__}: {exc}") from exc
        if theta.shape != theta_hat.shape or not theta.is_floating_point():
            raise InputError(f"{form}; the entry for {j} has shape {tuple(theta.shape)} and dtype {theta.dtype}")
        out[j] = theta.to(dtype=theta_hat.dtype, device=theta_hat.device)
    return out


@dataclass(frozen=True)
class DatamodelingScore:
    """The linear datamodeling score (LDS, Park et al. 2023) of influence scores, per test point.

    subsets (s, n) bool: the training points each retrain kept; predicted, actual (m, s):
    predicted = (1/n) sum_{i in subset} I_up,loss(z_i, z_test), the first-order change of the
    test loss up to a constant shared by all subsets; actual = the retrained test loss.
    spearman (m,): rank correlation over the subsets, per test point (nan where undefined: a non-finite
    retrained loss, or no variation); mean: the mean of the defined ones (a warning says how many are not).
    """

    subsets: np.ndarray
    predicted: np.ndarray
    actual: np.ndarray
    spearman: np.ndarray
    mean: float


def random_subsets(n: int, subsets: int, fraction: float, seed: int) -> np.ndarray:
    """(subsets, n) bool masks, each keeping round(fraction * n) training points drawn without replacement."""
    if not (is_integer(subsets) and subsets >= 3):
        raise InputError(f"subsets must be an integer >= 3 (a rank correlation needs several), got {subsets!r}")
    if not (is_integer(seed) and seed >= 0):
        raise InputError(f"seed must be an integer >= 0 (the subsets are drawn from it, reproducibly), got {seed!r}")
    if not 0 < fraction < 1:
        raise InputError(f"fraction must lie strictly between 0 and 1 (the share of training points kept), got {fraction!r}")
    size = int(round(fraction * n))
    if not 0 < size < n:
        raise InputError(f"fraction={fraction} keeps {size} of {n} training points; choose a fraction that keeps some but not all")
    rng = np.random.default_rng(seed)
    masks = np.zeros((int(subsets), n), dtype=bool)
    for row in masks:
        row[rng.choice(n, size, replace=False)] = True
    return masks


def lds(scores: Tensor | np.ndarray, retrain_fn: Callable[[np.ndarray], Any], *, subsets: int = 100,
        fraction: float = 0.5, seed: int = 0, done: Callable[[int], object] = lambda count: None,
        checkpoint: str | Path | None = None) -> DatamodelingScore:
    """Linear datamodeling score of I_up,loss scores (m, n) against retraining on random subsets.

    retrain_fn(index) trains the model your way on the training points `index` (sorted ints,
    round(fraction * n) of them) and returns the test losses of the m scored test points, (m,),
    measured the same way as the scores (the loss_fn given to Influence). Training on a subset
    S removes the points outside it, so to first order (MATH.md)
        L(z_test, theta_S) ~= L(z_test, theta_hat) - (1/n) sum_{i not in S} I_up,loss(z_i, z_test)
                            = constant + (1/n) sum_{i in S} I_up,loss(z_i, z_test),
    which is the prediction; the same holds, with another positive factor and constant, when
    retrain_fn averages the loss over the subset instead. Spearman's rho between predicted and
    actual over the subsets, per test point; 1 is a perfect ranking. A retrain_fn with random
    initialisation or minibatches adds noise to `actual`: average a few seeds inside it.
    done(count) is called after each retrain (and once with the count resumed). checkpoint: a .npz
    file that keeps every retrain's losses as it returns; run again with the same file to resume
    after an interruption (the same retrain_fn and test points assumed; other subsets are refused).
    """
    S = _as_numpy(scores)
    if S.ndim != 2:
        raise InputError(f"scores must be (m test points, n training points), got shape {S.shape}")
    _check_finite(S, "scores")
    masks = random_subsets(S.shape[1], subsets, fraction, seed)
    return lds_of_predictions(S @ masks.T.astype(S.dtype) / S.shape[1], masks, retrain_fn, done=done,
                              checkpoint=checkpoint)


def lds_of_predictions(predicted: Tensor | np.ndarray, masks: np.ndarray, retrain_fn: Callable[[np.ndarray], Any], *,
                       done: Callable[[int], object] = lambda count: None,
                       checkpoint: str | Path | None = None) -> DatamodelingScore:
    """The LDS of predictions made per subset: predicted (m, s) for the subsets masks (s, n) bool.

    For when one solve per subset is cheaper than one per test point (H is symmetric):
        predicted[t, k] = -(1/n) grad L(z_t)^T H^{-1} sum_{i in subset k} grad L(z_i),
    the same numbers lds() forms from the (m, n) scores. masks as random_subsets makes them;
    retrain_fn, done and checkpoint as for lds().
    """
    masks = _checked_masks(masks)
    P = _as_numpy(predicted)
    if P.ndim != 2 or P.shape[1] != masks.shape[0]:
        raise InputError(f"predicted must be (m test points, {masks.shape[0]} subsets), got shape {P.shape}")
    _check_finite(P, "predictions")
    m = P.shape[0]
    path = Path(checkpoint).expanduser() if checkpoint is not None else None
    digest = _masks_digest(masks) if path is not None else ""
    actual, finished = _resumed(path, masks, digest, m) if path is not None else _fresh(masks, m)
    if finished.any():
        done(int(finished.sum()))
    for k in np.flatnonzero(~finished):
        actual[:, k] = _losses(retrain_fn(np.flatnonzero(masks[k])), m)
        finished[k] = True
        if path is not None:
            _save_checkpoint(path, masks.shape, digest, actual, finished)
        done(1)
    rho = np.array([stats.spearmanr(p, a)[0] if np.isfinite(a).all() else np.nan for p, a in zip(P, actual)])
    if np.isnan(rho).any():
        bad = int(np.isnan(rho).sum())
        warn(f"the LDS of {bad} of {m} test points is undefined (retrain_fn returned NaN or inf for "
             f"{int((~np.isfinite(actual).all(1)).sum())} of them, or a test point's predictions or losses do not "
             f"vary over the subsets); `mean` averages the other {m - bad}, `spearman` holds nan for those")
    return DatamodelingScore(masks, P, actual, rho, float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"))


CHECKPOINT_FORMAT = "infl-lds-checkpoint-2"  # the subsets' shape and SHA-256, the losses so far, which are done


def _fresh(masks: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Room for the retrained losses (m, s), float64 (they keep their own precision, whatever the predictions'),
    and no subset done (s,)."""
    return np.empty((m, masks.shape[0])), np.zeros(masks.shape[0], dtype=bool)


def _resumed(path: Path, masks: np.ndarray, digest: str, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The retrained losses (m, s) and which subsets are done (s,) from the checkpoint at `path`, or a fresh
    start when it does not exist; InputError for a file that is not an LDS checkpoint or was written for other
    subsets (`digest`: _masks_digest(masks)) or another number of test points (it is left as it is)."""
    if not path.exists():
        if not path.parent.is_dir():
            raise InputError(f"checkpoint {path}: its folder {path.parent} does not exist; create it first")
        return _fresh(masks, m)
    try:
        held = np.load(path, allow_pickle=False)
        if not isinstance(held, np.lib.npyio.NpzFile):
            raise ValueError("one array, not an .npz archive")
        with held:
            written = str(held["format"])
            if written != CHECKPOINT_FORMAT:
                raise KeyError(f"format {written!r}, not {CHECKPOINT_FORMAT!r}")
            written_digest, shape = str(held["masks_sha256"]), tuple(held["masks_shape"].tolist())
            actual, finished = held["actual"], held["finished"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(f"checkpoint {path} exists but is not an LDS checkpoint of this version "
                         f"({type(error).__name__}: {error}); pass a new path (the file is left as it is)") from error
    if written_digest != digest or actual.shape != (m, masks.shape[0]):
        same = "; the same sizes, other subsets" if shape == masks.shape and actual.shape[0] == m else ""
        raise InputError(f"checkpoint {path} was written for other subsets or test points (the file: {shape[0]} "
                         f"subsets of {shape[1]} points, {actual.shape[0]} test points; now {masks.shape[0]} of "
                         f"{masks.shape[1]}, {m}{same}): pass a new path to start afresh, or the same subsets, "
                         "fraction and seed to resume")
    return actual.astype(np.float64), finished.astype(bool)


def _save_checkpoint(path: Path, shape: tuple[int, int], digest: str, actual: np.ndarray, finished: np.ndarray
                     ) -> None:
    """Write the LDS checkpoint atomically (a run killed while saving keeps the previous one): the subsets'
    shape and digest (_masks_digest), the losses so far and which subsets are done."""
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(CHECKPOINT_FORMAT), masks_sha256=np.array(digest), masks_shape=np.array(shape),
             actual=actual, finished=finished)
    write_atomic(path, buffer.getvalue())


def _masks_digest(masks: np.ndarray) -> str:
    """SHA-256 of the subsets (s, n) bool, shape included: what a checkpoint is checked against."""
    return hashlib.sha256(f"{masks.shape}".encode() + np.packbits(masks).tobytes()).hexdigest()


def _losses(returned: Any, m: int) -> np.ndarray:
    """retrain_fn's result as m real test losses (m,); InputError for another shape, complex or bool values."""
    raw = returned.detach().cpu().numpy() if isinstance(returned, Tensor) else np.asarray(returned)
    if raw.shape != (m,) or raw.dtype.kind not in "iuf":
        raise InputError(f"retrain_fn must return the {m} test losses as real numbers, shape ({m},); got shape "
                         f"{raw.shape}, dtype {raw.dtype}")
    return raw


def _checked_masks(masks: Any) -> np.ndarray:
    """masks as a (s, n) bool array of s >= 3 subsets, each keeping some but not all of the n points; else
    InputError."""
    M = np.asarray(masks)
    if M.ndim == 2 and M.dtype.kind in "iuf" and np.isin(M, (0, 1)).all():
        M = M.astype(bool)  # 0/1 numbers say the same
    if M.ndim != 2 or M.dtype != bool:
        raise InputError(f"masks must be a (subsets, n training points) bool array (or of 0s and 1s), as "
                         f"random_subsets makes; got shape {M.shape}, dtype {M.dtype}")
    if M.shape[0] < 3:
        raise InputError(f"masks hold {M.shape[0]} subsets; a rank correlation needs at least 3")
    kept = M.sum(1)
    if not ((kept > 0) & (kept < M.shape[1])).all():
        raise InputError(f"every subset must keep some but not all of the {M.shape[1]} training points; subsets "
                         f"{np.flatnonzero((kept == 0) | (kept == M.shape[1]))[:5].tolist()} keep none or all")
    return M


def _check_finite(values: np.ndarray, what: str) -> None:
    """InputError, before any retraining, if `values` hold NaN or inf."""
    if not np.isfinite(values).all():
        raise InputError(f"the {what} hold {int((~np.isfinite(values)).sum())} NaN or inf values; check the solve "
                         "(inf.info) before retraining")


def _as_numpy(values: Tensor | np.ndarray) -> np.ndarray:
    """A tensor as a NumPy array (detached, on the CPU, its own dtype); anything else as a float64 array."""
    return values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values, dtype=np.float64)
