"""Debugging domain mismatch (Koh & Liang 2017, section 5.3).

For the test points a model gets wrong, find the training points that drive
those predictions and what they share. A training point's weight on one test
point is |I_up,loss(z_i, z_test)| divided by the mean of |I_up,loss| over all
training points (so 1 is an average point; the paper's 4 children were 30 to
40 times above the rest). Averaged over the wrong test points, the largest
weights name the drivers; those above `threshold` are flagged as carrying an
outsized share. For tabular data, `over_represented` lists the feature values
whose share among the drivers most exceeds their share in the training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .influence import Influence
from .inputs import row_indices
from .objective import is_integer, positive_number


@dataclass(frozen=True)
class Drivers:
    """wrong (m,): the test indices analysed; scores (m, n): I_up,loss(z_i, z_test) (positive = harmful);
    weight (n,): mean over the wrong test points of |score| / mean_i |score|; top (k,): training indices
    by weight, largest first; outsized: those with weight >= threshold; share: fraction of the total
    |influence| on the wrong points that the top k carry."""

    wrong: np.ndarray
    scores: np.ndarray
    weight: np.ndarray
    top: np.ndarray
    outsized: np.ndarray
    share: float
    threshold: float


def find_drivers(inf: Influence, test: Any, wrong: Sequence[int], k: int = 20, threshold: float = 10.0) -> Drivers:
    """The training points driving the predictions on test[wrong] (test: (X, y) arrays, tensors or pandas
    objects, wrong: indices)."""
    X, y = inf.test_tensors(test)  # checked, and indexable by rows whatever their container
    wrong = row_indices(wrong, len(y), "wrong (test indices)")
    if not wrong.size:
        raise InputError("there are no wrong test predictions to explain; the model gets every test point right")
    if positive_number(threshold) is None:
        raise InputError(f"threshold must be a finite number > 0 (a multiple of the mean |influence|), got {threshold!r}")
    if not (is_integer(k) and 1 <= k <= inf.n_train):
        raise InputError(f"k must be an integer from 1 to the {inf.n_train} training points, got {k!r}")
    scores = inf.scores((X[wrong], y[wrong])).cpu().numpy()
    size = np.abs(scores)
    weight = (size / np.maximum(size.mean(1, keepdims=True), np.finfo(float).tiny)).mean(0)
    top = np.argsort(-weight, kind="stable")[:k]
    share = float((size[:, top].sum(1) / np.maximum(size.sum(1), np.finfo(float).tiny)).mean())
    return Drivers(wrong, scores, weight, top, np.flatnonzero(weight >= threshold), share, float(threshold))


@dataclass(frozen=True)
class Overrepresented:
    """A feature value held by `count` of the drivers: share among them vs share in the training set."""

    feature: str
    value: str
    count: int
    share_top: float
    share_train: float

    @property
    def lift(self) -> float:
        return self.share_top / self.share_train


def feature_values(column: np.ndarray, bins: int = 4) -> tuple[np.ndarray, list[str]]:
    """Codes (n,) and their labels for one feature: its values when it takes <= bins distinct values,
    else quantile bins of the column ("Qk [low, high]")."""
    values = np.unique(column)
    if len(values) <= bins:
        return np.searchsorted(values, column), [f"{v:g}" for v in values]
    edges = np.quantile(column, np.linspace(0, 1, bins + 1))
    codes = np.clip(np.searchsorted(edges[1:-1], column, side="right"), 0, bins - 1)
    return codes, [f"Q{b + 1} [{edges[b]:.3g}, {edges[b + 1]:.3g}]" for b in range(bins)]


def over_represented(X: np.ndarray, top: Sequence[int], names: Sequence[str] | None = None, bins: int = 4,
                     min_count: int = 2, most: int = 10) -> list[Overrepresented]:
    """Feature values (X (n, d) training features) over-represented among the rows `top` (lift = share among
    top / share in training > 1), held by at least min_count of them; at most `most`, highest lift first
    (none when the top rows look like the training set)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError(f"X must be the training features, shape (n, d), got shape {X.shape}")
    top = row_indices(top, len(X), "top (training row indices)")
    if not top.size:
        raise InputError("top is empty; pass the training rows to summarise (e.g. Drivers.top)")
    if not (is_integer(bins) and bins >= 1):
        raise InputError(f"bins must be an integer >= 1, got {bins!r}")
    names = list(names) if names is not None else [f"feature {j}" for j in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise InputError(f"got {len(names)} feature names for {X.shape[1]} features; give one name per column")
    found = []
    for j, name in enumerate(names):
        codes, labels = feature_values(X[:, j], bins)
        in_top = np.bincount(codes[top], minlength=len(labels))
        in_train = np.bincount(codes, minlength=len(labels)) / len(codes)
        over = (in_top >= min_count) & (in_top / len(top) > in_train)
        found += [Overrepresented(name, labels[c], int(in_top[c]), in_top[c] / len(top), float(in_train[c]))
                  for c in np.flatnonzero(over)]
    return sorted(found, key=lambda o: -o.lift)[:most]


OPERATORS = ("<=", ">=", "!=", "=", "<", ">")
SAME = 1e-6  # relative tolerance of = (and of the bounds of <, <=, >, >=): a float32 file's 0.1 is 0.1


def _compare(column: np.ndarray, op: str, number: float) -> np.ndarray:
    """column OP number, with values within SAME of the number counted as equal to it."""
    close = np.isclose(column, number, rtol=SAME, atol=0.0)
    return {"=": close, "!=": ~close, "<=": (column < number) | close, ">=": (column > number) | close,
            "<": (column < number) & ~close, ">": (column > number) & ~close}[op]


def _parse(condition: str, names: list[str]) -> tuple[str, str, float]:
    """(column, operator, number) of "column OP number"; the split tried at every operator, so a name may hold
    operator characters ("x<", "wow!")."""
    first = None
    for i in range(1, len(condition)):
        for op in OPERATORS:
            if condition.startswith(op, i):
                column, value = condition[:i].strip(), condition[i + len(op):].strip()
                first = first or (column, value)
                if column in names:
                    try:
                        return column, op, float(value)
                    except ValueError:
                        raise InputError(f"the value in {condition!r} is not a number; columns hold numbers") from None
    if first is None:
        raise InputError(f"cannot read the condition {condition!r}; write it as COLUMN=VALUE (or with !=, <, <=, >, >=), "
                         "e.g. 'age=17.5'")
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} columns)" if len(names) > 8 else "")
    raise InputError(f"no column {first[0]!r} in the test data; its columns are: {shown}")


def rows_where(X: np.ndarray, conditions: Sequence[str], names: Sequence[str] | None = None) -> np.ndarray:
    """Mask (n,) of the rows of X (n, d) meeting every condition, each "column OP number" with OP one of
    = != < <= > >= and column a name (or "feature j", from 0, when names is None), e.g. "age = 17.5".
    Values within a relative SAME of the number count as equal to it."""
    names = list(names) if names is not None else [f"feature {j}" for j in range(X.shape[1])]
    if len(names) != X.shape[1]:
        raise InputError(f"got {len(names)} column names for {X.shape[1]} columns; give one name per column")
    mask = np.ones(len(X), dtype=bool)
    for condition in conditions:
        column, op, number = _parse(condition, names)
        if not math.isfinite(number):
            raise InputError(f"the value in {condition!r} is not a finite number; the data hold no NaN or inf")
        mask &= _compare(X[:, names.index(column)], op, number)
    return mask
