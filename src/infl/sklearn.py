"""Fitted scikit-learn linear models in, the same `Influence` as the PyTorch path out.

Each supported estimator minimises, up to a positive factor, the mean form
R(theta) = (1/n) sum_i L(z_i, theta) + (1/2) sum_k l2_k theta_k^2 of MATH.md
with theta = (coef_, intercept_) in an `nn.Linear` (float64). The table below
is how each estimator's objective becomes that form (n training points):

    estimator                         L(z, theta)                       l2 on coef_    l2 on intercept_
    LogisticRegression (lbfgs, newton-*, sag, saga)
                                      log-loss                          1 / (C n)      0
    LogisticRegression (liblinear)    log-loss                          1 / (C n)      1 / (C n s^2)
    LinearSVC                         squared hinge (default) or        1 / (C n)      1 / (C n s^2)
                                      smooth hinge, one per class (OvR)
    SGDClassifier(loss="hinge")       smooth hinge, one per class (OvR) alpha          0
    Ridge                             (y - f)^2 summed over targets     2 alpha / n    0

s = intercept_scaling: liblinear fits the intercept as the weight of a
constant feature s, so it penalises (intercept / s)^2. The hinge is not
differentiable; it is replaced by SmoothHinge(s, t) (MATH.md) at the
estimator's own parameters, an approximation whose accuracy the README
reports. The squared hinge is once differentiable: its Hessian is the
generalised one, 2 x x^T on points inside the margin, exact almost everywhere.

A multinomial softmax does not change when one constant is added to every
intercept (or, without penalty, one vector to every coef_ row), so H is
singular along that direction. The intercepts are shifted so the last is 0
(same predictions, same loss) and that last entry gets l2 = GAUGE_L2: the
shift is then the unique minimiser of the augmented objective, leave-one-out
refits keep the same gauge, and since every loss gradient is orthogonal to
the null direction the scores equal those of the pseudo-inverse exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InputError, warn
from .influence import Influence
from .inputs import to_tensors
from .losses import hinge_terms, temperature

DEFAULT_HINGE_T = 0.01
"""Smoothing of the hinge (SmoothHinge t) for LinearSVC(loss="hinge") and SGDClassifier(loss="hinge")."""
GAUGE_L2 = 0.25
"""l2 on the last intercept of a multinomial model: any value > 0 gives the same scores; 1/4 bounds
the softmax curvature p(1 - p), so H keeps its scale."""
LOGISTIC_SOLVERS_FREE_INTERCEPT = ("lbfgs", "newton-cg", "newton-cholesky", "sag", "saga")
SUPPORTED = "LogisticRegression (and LogisticRegressionCV), LinearSVC, SGDClassifier(loss='hinge') and Ridge"


@dataclass(frozen=True)
class Recipe:
    """How one fitted estimator maps onto MATH.md's objective: loss, l2 and label coding."""

    coef: np.ndarray  # (K, d)
    intercept: np.ndarray | None  # (K,) or None without intercept
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    l2: dict[str, Any]
    encode: Callable[[np.ndarray], np.ndarray]  # targets -> what loss_fn takes
    smoothed: bool  # the loss is a smooth surrogate of the one the estimator minimised


# ------------------------------------------------------------------ losses
def logistic_pm(outputs: Tensor, y: Tensor) -> Tensor:
    """sum_k log(1 + exp(-y_k f_k)) per example (b,); y in {-1, +1}, shaped like outputs (b, K)."""
    return F.softplus(-y * outputs).sum(1)


def multinomial(outputs: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of the softmax per example (b,); y class indices (b,)."""
    return F.cross_entropy(outputs, y, reduction="none")


def squared_hinge_pm(outputs: Tensor, y: Tensor) -> Tensor:
    """sum_k max(0, 1 - y_k f_k)^2 per example (b,); y in {-1, +1} (b, K)."""
    return F.relu(1 - y * outputs).square().sum(1)


def smooth_hinge_pm(t: float) -> Callable[[Tensor, Tensor], Tensor]:
    """sum_k t log(1 + exp((1 - y_k f_k) / t)) per example (b,): SmoothHinge of MATH.md, one per class."""
    t = temperature(t, "hinge_t (the smooth hinge's t)")
    return lambda outputs, y: hinge_terms(y * outputs, t).sum(1)


def squared_error(outputs: Tensor, y: Tensor) -> Tensor:
    """sum_k (y_k - f_k)^2 per example (b,)."""
    return (outputs - y).square().sum(1)


# ------------------------------------------------------------- label coding
def _class_index(classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(f"classification targets must be 1-D labels, got shape {y.shape}")
    unknown = np.setdiff1d(np.unique(y), classes)
    if unknown.size:
        raise InputError(f"labels {unknown[:5].tolist()} are not among the estimator's classes_ "
                         f"{classes.tolist()}; give targets coded as when the estimator was fitted")
    return np.searchsorted(classes, y)


def _plus_minus(classes: np.ndarray, K: int) -> Callable[[np.ndarray], np.ndarray]:
    """Labels -> (b, K) in {-1, +1}: +1 for classes_[1] when K == 1 (binary), else one-vs-rest."""
    def encode(y: np.ndarray) -> np.ndarray:
        idx = _class_index(classes, y)
        hot = idx[:, None] == (np.array([1]) if K == 1 else np.arange(K))[None, :]
        return np.where(hot, 1.0, -1.0)
    return encode


def _regression_targets(K: int) -> Callable[[np.ndarray], np.ndarray]:
    def encode(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if y.ndim != 2 or y.shape[1] != K:
            raise InputError(f"the estimator has {K} target(s) but y has shape {y.shape}")
        return y
    return encode


# ------------------------------------------------------------------ checks
def _check_fitted(est: Any) -> None:
    from sklearn.exceptions import NotFittedError as SkNotFitted
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(est)
    except SkNotFitted as exc:
        raise InputError(f"the {type(est).__name__} is not fitted: call estimator.fit(X, y) on the training "
                         "data first, then pass the same X and y") from exc
    except TypeError as exc:
        raise InputError(f"expected a fitted scikit-learn estimator ({SUPPORTED}), got {type(est).__name__}") from exc


def _instead(est: Any) -> str:
    """What to pass instead of an unsupported estimator that wraps or picks a supported one."""
    if hasattr(est, "steps"):  # a Pipeline
        return (". For a Pipeline whose last step is one of these, pass that step and the data as it sees them: "
                "from_sklearn(pipe[-1], pipe[:-1].transform(X), y)")
    if type(est).__name__ == "RidgeCV":
        return ". For RidgeCV, refit Ridge(alpha=est.alpha_) (same fit_intercept) on X, y and pass that"
    return ""


def _refuse(est: Any, what: str) -> InputError:
    return InputError(f"{type(est).__name__} with {what} is not supported: influence needs the L2-penalised "
                      f"objective this module knows. Supported: {SUPPORTED}, with the L2 penalty (or none)")


def _logistic_penalty(est: Any) -> str | None:
    """The penalty LogisticRegression.fit applies: 'l2', 'l1', 'elasticnet' or None (also for sklearn >= 1.8)."""
    penalty = getattr(est, "penalty", "l2")
    if penalty != "deprecated":
        return None if penalty == "none" else penalty  # "none": the spelling before scikit-learn 1.2
    if np.isinf(_chosen_C(est)):
        return None
    ratios = set(np.atleast_1d(est.l1_ratio_).tolist()) if hasattr(est, "l1_ratio_") else {est.l1_ratio}  # CV: chosen
    ratio = ratios.pop() if len(ratios) == 1 else "several"
    return "l2" if ratio in (0, None) else ("l1" if ratio == 1 else "elasticnet")


def _check_common(est: Any) -> None:
    if getattr(est, "class_weight", None) is not None:
        raise _refuse(est, f"class_weight={est.class_weight!r} (refit with class_weight=None)")


def warn_if_not_converged(est: Any) -> None:
    """sklearn's ConvergenceWarning, restated: n_iter_ reached max_iter, so theta is not the minimiser."""
    from sklearn.exceptions import ConvergenceWarning

    n_iter, max_iter = getattr(est, "n_iter_", None), getattr(est, "max_iter", None)
    if n_iter is None or max_iter is None or np.max(np.atleast_1d(n_iter)) < max_iter:
        return
    if getattr(est, "tol", 0) is None:  # e.g. SGDClassifier(tol=None): max_iter epochs by design, no warning
        return
    warn(f"the {type(est).__name__} stopped at max_iter={max_iter} before converging (scikit-learn's "
         "ConvergenceWarning). Influence assumes its coefficients minimise the training objective; away from "
         "the minimum the scores are off by terms of the size of the remaining gradient (see inf.grad_norm_). "
         "Refit with a larger max_iter (and a smaller tol) before trusting the scores", ConvergenceWarning)


# ----------------------------------------------------------------- recipes
def _arrays(est: Any) -> tuple[np.ndarray, np.ndarray | None]:
    coef = np.atleast_2d(np.asarray(est.coef_, dtype=np.float64))
    if not getattr(est, "fit_intercept", True):
        return coef, None
    return coef, np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64))


def _liblinear_l2(C: float, n: int, est: Any) -> dict[str, Any]:
    """liblinear: C sum L + (1/2)||w||^2 + (1/2)(b / s)^2, i.e. l2 = 1/(C n) on w and 1/(C n s^2) on b."""
    s = float(est.intercept_scaling)
    return {"weight": 1 / (C * n), "bias": 1 / (C * n * s * s)}


def _logistic(est: Any, n: int) -> Recipe:
    penalty = _logistic_penalty(est)
    if penalty not in ("l2", None):
        raise _refuse(est, f"penalty {penalty!r} (L1 or elastic net: the objective is not twice differentiable)")
    coef, intercept = _arrays(est)
    C = np.inf if penalty is None else _chosen_C(est)
    lam = 0.0 if np.isinf(C) else 1 / (C * n)
    K, classes = coef.shape[0], est.classes_
    if est.solver == "liblinear":
        l2 = _liblinear_l2(C, n, est) if intercept is not None else {"weight": lam}
    elif est.solver in LOGISTIC_SOLVERS_FREE_INTERCEPT:
        l2 = {"weight": lam}
    else:
        raise _refuse(est, f"solver={est.solver!r}")
    if K == 1:
        return Recipe(coef, intercept, logistic_pm, l2, _plus_minus(classes, 1), False)
    if getattr(est, "multi_class", "auto") == "ovr" or est.solver == "liblinear":  # scikit-learn < 1.8 only
        raise _refuse(est, "one-vs-rest multi-class fits (refit with the multinomial default, e.g. solver='lbfgs')")
    coef, intercept, l2 = _fix_softmax_gauge(coef, intercept, l2)
    return Recipe(coef, intercept, multinomial, l2, lambda y: _class_index(classes, y), False)


def _chosen_C(est: Any) -> float:
    """C of a LogisticRegression, or the C a LogisticRegressionCV chose and refitted on all the data with."""
    if not hasattr(est, "C_"):
        return float(est.C)
    if not est.refit:
        raise _refuse(est, "refit=False (its coefficients average the folds' fits and minimise no objective; "
                           "refit with refit=True)")
    chosen = np.unique(np.asarray(est.C_, dtype=np.float64))
    if chosen.size != 1:
        raise _refuse(est, f"one C per class ({chosen.tolist()}); refit a LogisticRegression with one C")
    return float(chosen[0])


def _fix_softmax_gauge(coef: np.ndarray, intercept: np.ndarray | None,
                       l2: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Shift the unpenalised softmax parameters so the last class's are 0 and give those l2 = GAUGE_L2."""
    l2 = dict(l2)
    if intercept is not None:
        intercept = intercept - intercept[-1]
        gauge = torch.zeros(intercept.shape[0], dtype=torch.float64)
        gauge[-1] = GAUGE_L2
        l2["bias"] = gauge
    if l2["weight"] == 0:
        coef = coef - coef[-1]
        gauge = torch.zeros(coef.shape, dtype=torch.float64)
        gauge[-1] = GAUGE_L2
        l2["weight"] = gauge
    return coef, intercept, l2


def _linear_svc(est: Any, n: int, hinge_t: float) -> Recipe:
    if est.penalty != "l2":
        raise _refuse(est, f"penalty={est.penalty!r}")
    if est.multi_class != "ovr":
        raise _refuse(est, f"multi_class={est.multi_class!r} (use multi_class='ovr')")
    coef, intercept = _arrays(est)
    l2 = _liblinear_l2(float(est.C), n, est) if intercept is not None else {"weight": 1 / (float(est.C) * n)}
    smoothed = est.loss == "hinge"
    loss = smooth_hinge_pm(hinge_t) if smoothed else squared_hinge_pm
    return Recipe(coef, intercept, loss, l2, _plus_minus(est.classes_, coef.shape[0]), smoothed)


def _sgd(est: Any, hinge_t: float) -> Recipe:
    if est.loss != "hinge":
        raise _refuse(est, f"loss={est.loss!r} (use loss='hinge')")
    if est.penalty not in ("l2", None):
        raise _refuse(est, f"penalty={est.penalty!r}")
    if est.average:
        raise _refuse(est, "average=True (averaged iterates do not minimise the objective)")
    if est.early_stopping:
        raise _refuse(est, "early_stopping=True (it trains on a part of X only, holding out validation_fraction)")
    coef, intercept = _arrays(est)
    l2 = {"weight": 0.0 if est.penalty is None else float(est.alpha)}
    return Recipe(coef, intercept, smooth_hinge_pm(hinge_t), l2, _plus_minus(est.classes_, coef.shape[0]), True)


def _ridge(est: Any, n: int) -> Recipe:
    """||y - X w - b||^2 + alpha ||w||^2 = 2 n [(1/n) sum (y_i - f_i)^2 / 2 ...]: with L = (y - f)^2, l2 = 2 alpha / n."""
    if est.positive:
        raise _refuse(est, "positive=True (a constrained optimum: its gradient is not zero)")
    alpha = np.atleast_1d(np.asarray(est.alpha, dtype=np.float64))
    if alpha.size > 1 and not np.all(alpha == alpha[0]):
        raise _refuse(est, "one alpha per target (fit one Ridge per target instead)")
    coef, intercept = _arrays(est)
    return Recipe(coef, intercept, squared_error, {"weight": 2 * float(alpha[0]) / n},
                  _regression_targets(coef.shape[0]), False)


def recipe_for(est: Any, n: int, hinge_t: float = DEFAULT_HINGE_T) -> Recipe:
    """The Recipe of a fitted estimator, or an InputError naming what is supported."""
    from sklearn.linear_model import LogisticRegression, Ridge, SGDClassifier
    from sklearn.svm import LinearSVC

    kinds = (LogisticRegression, LinearSVC, SGDClassifier, Ridge)
    if not isinstance(est, kinds):
        raise InputError(f"unsupported estimator {type(est).__name__}; supported: {SUPPORTED}{_instead(est)}")
    _check_fitted(est)
    _check_common(est)
    if isinstance(est, LogisticRegression):
        return _logistic(est, n)
    if isinstance(est, LinearSVC):
        return _linear_svc(est, n, hinge_t)
    if isinstance(est, SGDClassifier):
        return _sgd(est, hinge_t)
    return _ridge(est, n)


# ---------------------------------------------------------------- the model
def to_linear(coef: np.ndarray, intercept: np.ndarray | None) -> nn.Linear:
    """nn.Linear (float64) with weight = coef (K, d) and bias = intercept (K,)."""
    K, d = coef.shape
    layer = nn.Linear(d, K, bias=intercept is not None).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(coef))
        if intercept is not None:
            layer.bias.copy_(torch.from_numpy(intercept))
    return layer.requires_grad_(True)


class EstimatorInfluence(Influence):
    """An Influence whose train and test data are given as the estimator takes them: (X, labels).

    Labels are encoded for the loss (class indices, +-1 or float targets) by `encode`.
    """

    def __init__(self, model: nn.Module, recipe: Recipe, estimator_name: str, *,
                 feature_names: np.ndarray | None = None, **options: Any) -> None:
        super().__init__(model, recipe.loss_fn, l2=recipe.l2, **options)
        self.recipe, self.estimator_name, self.feature_names = recipe, estimator_name, feature_names

    def encode(self, data: Any, name: str = "data") -> tuple[Tensor, Tensor]:
        """(X, y) in the estimator's terms -> float64 tensors the loss takes; `name` (train, test) for messages."""
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise InputError(f"give {name} as a pair (X, y), as for {self.estimator_name}.fit; got {type(data).__name__}")
        X = _features(data[0], self.recipe.coef.shape[1], self.feature_names, f"{name} X")
        y = self.recipe.encode(np.asarray(data[1]))
        return to_tensors((X, y), torch.float64, torch.device("cpu"), name)

    def fit(self, train: Any) -> EstimatorInfluence:
        return super().fit(self.encode(train, "train"))

    def plan(self, train: Any) -> dict[str, int]:
        return super().plan(self.encode(train, "train"))

    def test_tensors(self, test: Any) -> tuple[Tensor, Tensor]:
        return super().test_tensors(self.encode(test, "test"))

    def losses_of(self, estimator: Any, data: Any) -> np.ndarray:
        """Per-example loss L (this Influence's loss) of any fitted estimator of the same kind on (X, y), (m,).

        E.g. of a leave-one-out refit: its change from this model's losses is what -score / n predicts.
        """
        X, y = self.encode(data)
        coef, intercept = _arrays(estimator)
        outputs = X @ torch.from_numpy(coef).T + (0 if intercept is None else torch.from_numpy(intercept))
        return self.recipe.loss_fn(outputs, y).numpy()


def _features(X: Any, d: int, names: np.ndarray | None = None, what: str = "X") -> np.ndarray:
    """X as a float64 (n, d) array. A data frame's columns are matched by name to `names` (the estimator's
    feature_names_in_) when it was fitted on one, so a frame with its columns in another order scores right."""
    from scipy import sparse

    if sparse.issparse(X):
        raise InputError(f"{what} is a sparse matrix; pass {what}.toarray() (influence forms dense gradients anyway)")
    if hasattr(X, "columns") and hasattr(X, "dtypes"):  # a pandas data frame
        X = _frame_values(X, names, what)
    try:
        X = np.array(X, dtype=np.float64)  # a copy: negative strides and read-only views are fine
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must hold numbers only (encode categories as numbers first, as for the "
                         f"estimator); {exc}") from None
    if X.ndim != 2 or X.shape[1] != d:
        raise InputError(f"{what} must be 2-D with {d} features (as the estimator was fitted), got shape {X.shape}")
    return X


def _frame_values(frame: Any, names: np.ndarray | None, what: str) -> np.ndarray:
    """A data frame's values as float64 (missing cells as NaN), its columns put in the order of `names`."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if names is not None:
        columns = [str(c) for c in frame.columns]
        missing = [n for n in names if n not in columns]
        extra = [c for c in columns if c not in set(names)]
        if missing or extra:
            raise InputError(f"{what}'s columns are not the ones the estimator was fitted on: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}; pass a frame with the columns of estimator.feature_names_in_")
        frame = frame.set_axis(columns, axis=1)[list(names)]  # a new frame: the user's is not touched
    text = [str(c) for c, t in frame.dtypes.items() if not (is_numeric_dtype(t) or is_bool_dtype(t))]
    if text:
        raise InputError(f"{what} has columns that are not numbers: {text[:5]}; encode them as numbers (e.g. "
                         "pandas.get_dummies) as for the estimator")
    values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"{what} has {int(bad.sum())} missing or infinite cell(s), the first in column "
                         f"{frame.columns[col]!r}, row {frame.index[row]!r}; fill or drop them, as for the estimator")
    return values


def from_sklearn(estimator: Any, X: Any, y: Any, *, hinge_t: float = DEFAULT_HINGE_T,
                 **influence_options: Any) -> EstimatorInfluence:
    """A fitted Influence for a fitted scikit-learn linear model and its training data (X, y).

    X (n, d) and y (n,) (or (n, k) for multi-target Ridge) must be the data
    the estimator was fitted on, without sample weights. Queries take data
    the same way: `inf.scores((X_test, y_test))` -> (m, n) I_up,loss, with
    the loss of the table in this module's docstring, positive = harmful,
    removing z_i changes the test loss by about -score / n. The estimator is
    not modified. hinge_t: SmoothHinge t for the hinge losses.
    influence_options: Influence's keyword options (solver, damping, ...;
    not l2, which comes from the estimator). Warns (ConvergenceWarning) when
    the estimator stopped at max_iter.
    """
    if "l2" in influence_options:
        raise InputError("from_sklearn sets l2 from the estimator (C, alpha, intercept handling); do not pass l2")
    names = getattr(estimator, "feature_names_in_", None)
    X_arr = _features(X, getattr(estimator, "n_features_in_", np.shape(X)[-1]), names, "train X")
    recipe = recipe_for(estimator, X_arr.shape[0], hinge_t)
    warn_if_not_converged(estimator)
    if recipe.smoothed:  # the surrogate is not minimised at the estimator's parameters: that is expected
        influence_options.setdefault("stationarity_tol", float("inf"))
    model = to_linear(recipe.coef, recipe.intercept)
    inf = EstimatorInfluence(model, recipe, type(estimator).__name__, feature_names=names, **influence_options)
    return inf.fit((X_arr, y))
