"""Fixing mislabelled training data (Koh & Liang 2017, section 5.4 and Figure 6).

Flip a fraction of the training labels, train on the noisy labels, then
simulate a person checking training points in some order: by |self-influence|,
by training loss, or at random. Checking a point reveals (and restores) its
true label. Reported per order: the fraction of flipped labels found against
the fraction of data checked, and the test accuracy after retraining with the
checked points fixed.

Sign convention (MATH.md): self-influence I_up,loss(z_i, z_i) =
-grad L(z_i)^T H^-1 grad L(z_i) is <= 0 for a positive definite H, so its
magnitude |I_up,loss(z_i, z_i)| = grad L^T H^-1 grad L ranks the points: the
largest are the ones the model would fit worst if they were left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch

from .data import Split
from .errors import InputError
from .influence import Influence, Solver
from .losses import cross_entropy
from .objective import is_integer, positive_number
from .train import fit_logistic

METHODS = ("self-influence", "training loss", "random")
CHECK_GRID = tuple(round(0.01 * k, 2) for k in range(0, 101))  # fractions of the training set checked
FIX_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)  # fractions checked before retraining
ROUGH_TOL = 1e-6  # gradient max at which L-BFGS hands over to the preconditioned polish (fit_noisy)
CLAIM_UP_TO = 0.3  # the paper's claim: self-influence finds more flips than loss at every fraction up to 30%


@dataclass(frozen=True)
class Ranking:
    """Training points in checking order for each method.

    self_influence (n,): I_up,loss(z_i, z_i) (<= 0 for PD H); loss (n,): L(z_i, theta_hat);
    orders: method -> indices (n,), first to check first.
    """

    self_influence: np.ndarray
    loss: np.ndarray
    orders: dict[str, np.ndarray]


@dataclass(frozen=True)
class TriageRun:
    """One seed: noisy labels (n,) trained on, flipped indices (k,); found[method] (len(checked),) fraction of flips found after checking
    each fraction in `checked`; accuracy[method] (len(fixed),) test accuracy after fixing, retrained;
    flips_fitted: fraction of the flipped points the model trained on the noisy labels predicts as
    their flipped label (how far it memorised them: the regime that decides which ranking wins)."""

    seed: int
    noisy: np.ndarray
    flipped: np.ndarray
    checked: np.ndarray
    found: dict[str, np.ndarray]
    fixed: np.ndarray
    accuracy: dict[str, np.ndarray]
    accuracy_clean: float
    accuracy_noisy: float
    flips_fitted: float
    ranking: Ranking = field(repr=False)


def check_fraction(fraction: float, name: str = "flip fraction") -> float:
    """`fraction` as a float in (0, 1), or an InputError naming the range."""
    number = positive_number(fraction)
    if number is None or not number < 1:
        raise InputError(f"{name} must be a number strictly between 0 and 1 (e.g. 0.1 for 10%), got {fraction!r}")
    return number


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """Distinct integer seeds, at least one."""
    seeds = list(dict.fromkeys(seeds))
    if not seeds or not all(is_integer(s) and s >= 0 for s in seeds):
        raise InputError(f"seeds must be one or more integers >= 0, got {seeds!r}")
    return [int(s) for s in seeds]


def flip_labels(y: np.ndarray, fraction: float, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels (n,), flipped indices (k,)): round(fraction * n) points drawn without replacement
    each get a different class drawn uniformly from the other classes - 1. y is not modified."""
    fraction = check_fraction(fraction)
    y = np.asarray(y)
    if not (is_integer(classes) and y.dtype.kind in "iu" and y.size and 0 <= y.min() and y.max() < classes):
        raise InputError(f"flip_labels needs integer labels 0..classes-1 and classes an integer above the largest, "
                         f"got classes={classes!r} and labels {np.unique(y)[:10].tolist()}")
    if classes < 2 or len(np.unique(y)) < 2:
        raise InputError(f"flipping labels needs at least 2 classes, got {np.unique(y).tolist()}; "
                         "give data with two or more classes")
    rng = np.random.default_rng(seed)
    k = max(1, round(fraction * len(y)))
    flipped = np.sort(rng.choice(len(y), size=k, replace=False))
    noisy = np.array(y, copy=True)
    noisy[flipped] = (noisy[flipped] + rng.integers(1, classes, size=k)) % classes
    return noisy, flipped


def rank_for_checking(inf: Influence, seed: int = 0) -> Ranking:
    """Orders to check the training points of a fitted Influence in: |self-influence| largest first,
    training loss largest first, and a random permutation drawn with `seed`. Ties keep index order."""
    self_inf = inf.self_influence().cpu().numpy()
    obj = inf.objective_
    with torch.no_grad():
        loss = obj.losses(obj.theta, inf.X_train_, inf.y_train_).cpu().numpy()
    orders = {"self-influence": np.argsort(-np.abs(self_inf), kind="stable"),
              "training loss": np.argsort(-loss, kind="stable"),
              "random": np.random.default_rng(seed).permutation(len(loss))}
    return Ranking(self_inf, loss, orders)


def checked_count(fraction: float, n: int) -> int:
    """How many of n points a check of `fraction` of the data covers."""
    return int(math.floor(fraction * n + 1e-9))


def found_fraction(order: np.ndarray, flipped: np.ndarray, checked: Sequence[float]) -> np.ndarray:
    """Fraction of `flipped` among the first checked_count(f, n) of `order` (n,), for each f in `checked`."""
    is_flipped = np.zeros(len(order), bool)
    is_flipped[flipped] = True
    hits = np.concatenate([[0], np.cumsum(is_flipped[order])])
    return np.array([hits[checked_count(f, len(order))] for f in checked]) / len(flipped)


def accuracy(model: torch.nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    """Fraction of X (n, d) the model classifies as y (n,)."""
    with torch.no_grad():
        return float((model(torch.as_tensor(X)).argmax(1).numpy() == y).mean())


def fixed_labels(noisy: np.ndarray, clean: np.ndarray, order: np.ndarray, fraction: float) -> np.ndarray:
    """Labels (n,) after checking the first `fraction` of `order`: those points get their true label back."""
    out = noisy.copy()
    seen = order[:checked_count(fraction, len(order))]
    out[seen] = clean[seen]
    return out


def fixed_accuracies(split: Split, noisy: np.ndarray, orders: dict[str, np.ndarray], fixed: Sequence[float],
                     model: torch.nn.Module, l2: float, tol: float,
                     factor: torch.Tensor | None = None) -> tuple[dict[str, np.ndarray], float]:
    """(test accuracy (len(fixed),) per method after fixing and retraining, accuracy with clean labels).

    Each method's retraining warm-starts from its previous fraction (the first from `model`, trained
    on `noisy`), preconditioned by `factor` (the Cholesky factor of the noisy model's Hessian, if
    given: fixing labels moves the optimum but not the curvature much). A label vector already
    trained on (e.g. every flip found = the clean labels) is not trained again: the optimum is unique
    (l2 > 0), so its accuracy is reused.
    """
    def train(labels: np.ndarray, init: torch.nn.Module) -> tuple[torch.nn.Module, float]:
        key = labels.tobytes()
        if key not in seen:
            fit = fit_logistic(split.X_train, labels, split.classes, l2, init=init, tol=tol, factor=factor)
            seen[key] = (fit, accuracy(fit, split.X_test, split.y_test))
        return seen[key]

    seen: dict[bytes, tuple[torch.nn.Module, float]] = {}
    clean = train(split.y_train, model)[1]
    out = {}
    for method, order in orders.items():
        start, acc = model, []
        for f in fixed:
            start, a = train(fixed_labels(noisy, split.y_train, order, f), start)
            acc.append(a)
        out[method] = np.array(acc)
    return out, clean


def without_empty_features(split: Split) -> Split:
    """`split` without the input columns that are 0 on every training row (MNIST's border pixels).

    Exact for the l2-regularised logistic regression: their weights have zero loss gradient, so the
    optimum sets them to 0, and they add only l2 * I to a decoupled block of H; gradients,
    self-influence and predictions are unchanged, while p (and the O(p^3) factorisation) shrinks.
    """
    keep = np.flatnonzero(np.any(split.X_train != 0, axis=0))
    if len(keep) == split.X_train.shape[1]:
        return split
    return replace(split, X_train=split.X_train[:, keep], X_test=split.X_test[:, keep], image_shape=None)


def fit_noisy(split: Split, labels: np.ndarray, l2: float, solver: str | Solver,
              tol: float) -> tuple[torch.nn.Module, Influence]:
    """The model trained on `labels` to gradient max `tol`, and its fitted Influence.

    L-BFGS stops first at ROUGH_TOL; where the solver holds a Cholesky factor (exact), the polish
    to `tol` runs preconditioned by the factor of the Hessian there (a few iterations, where plain
    L-BFGS needs hundreds at small l2), and the Influence is fitted again at the polished optimum.
    """
    model = fit_logistic(split.X_train, labels, split.classes, l2, tol=max(tol, ROUGH_TOL))
    inf = Influence(model, cross_entropy, l2=l2, solver=solver).fit((split.X_train, labels))
    if tol >= ROUGH_TOL:
        return model, inf
    factor = getattr(inf.solver, "factor", None)
    model = fit_logistic(split.X_train, labels, split.classes, l2, init=model, tol=tol, factor=factor)
    return model, Influence(model, cross_entropy, l2=l2, solver=solver).fit((split.X_train, labels))


def quiet(stage: str) -> None:
    """The default progress report: nothing."""


def triage_seed(split: Split, *, flip: float = 0.1, seed: int = 0, l2: float = 0.01, solver: str | Solver = "exact",
                fixed: Sequence[float] = FIX_GRID, tol: float = 1e-9, progress: Callable[[str], None] = quiet
                ) -> TriageRun:
    """One run of the paper's experiment on `split` with the paper's model (multinomial logistic
    regression, l2) and labels flipped with `seed`: rank, count flips found, fix, retrain.
    progress(stage) is called as each stage begins."""
    noisy, flipped = flip_labels(split.y_train, flip, split.classes, seed)
    split = without_empty_features(split)
    progress(f"seed {seed}: training on the noisy labels")
    model, inf = fit_noisy(split, noisy, l2, solver, tol)
    progress(f"seed {seed}: ranking by self-influence, training loss and at random")
    ranking = rank_for_checking(inf, seed)
    checked = np.array(CHECK_GRID)
    found = {m: found_fraction(ranking.orders[m], flipped, checked) for m in METHODS}
    progress(f"seed {seed}: fixing the checked labels and retraining ({len(fixed)} fractions x {len(METHODS)} orders)")
    acc, clean = fixed_accuracies(split, noisy, {m: ranking.orders[m] for m in METHODS}, fixed, model, l2, tol,
                                  getattr(inf.solver, "factor", None))
    return TriageRun(seed, noisy, flipped, checked, found, np.asarray(fixed, float), acc, clean,
                     accuracy(model, split.X_test, split.y_test),
                     accuracy(model, split.X_train[flipped], noisy[flipped]), ranking)


def triage(split: Split, *, flip: float = 0.1, seeds: Sequence[int] = (0, 1, 2), l2: float = 0.01,
           solver: str | Solver = "exact", fixed: Sequence[float] = FIX_GRID, tol: float = 1e-9,
           progress: Callable[[str], None] = quiet) -> list[TriageRun]:
    """triage_seed for each seed (each flips a different random set of labels); progress(stage) as stages begin."""
    check_fraction(flip)
    bad = [f for f in fixed if not 0 < f <= 1]
    if bad:
        raise InputError(f"fractions to fix must lie in (0, 1], got {bad[0]!r}")
    return [triage_seed(split, flip=flip, seed=s, l2=l2, solver=solver, fixed=fixed, tol=tol, progress=progress)
            for s in check_seeds(seeds)]


@dataclass(frozen=True)
class Claim:
    """The paper's claim checked on the mean over seeds: at each checked fraction in (0, up_to],
    does self-influence find more flips than training loss? margins (k,) = mean difference."""

    fractions: np.ndarray
    margins: np.ndarray

    @property
    def holds(self) -> bool:
        return bool((self.margins > 0).all())

    @property
    def failures(self) -> np.ndarray:
        """Fractions at which self-influence did not find more flips (mean over seeds)."""
        return self.fractions[self.margins <= 0]


def check_claim(runs: Sequence[TriageRun], up_to: float = CLAIM_UP_TO) -> Claim:
    """Self-influence against training loss at every checked fraction in (0, up_to], mean over seeds."""
    if not runs:
        raise InputError("check_claim needs at least one TriageRun (from triage())")
    checked = runs[0].checked
    keep = (checked > 0) & (checked <= (positive_number(up_to) or 0) + 1e-9)
    if not keep.any() or up_to > 1:  # over no fraction the claim would hold vacuously
        raise InputError(f"up_to must be a fraction of the data in [{checked[checked > 0].min():g}, 1], the checked "
                         f"fractions it covers (e.g. 0.3), got {up_to!r}")
    margin = np.mean([r.found["self-influence"] - r.found["training loss"] for r in runs], axis=0)
    return Claim(checked[keep], margin[keep])


def spread(runs: Sequence[TriageRun], key: str, method: str) -> tuple[np.ndarray, ...]:
    """(mean, std, min, max) over seeds of the runs' `key` ("found" or "accuracy") for `method`."""
    values = np.stack([getattr(r, key)[method] for r in runs])
    return values.mean(0), values.std(0), values.min(0), values.max(0)
