"""Training-set attacks (Koh & Liang 2017, section 5.2): perturb training images to flip one test prediction.

For a target test point z_test, the training points with the largest
||I_pert,loss(z_i, z_test)||_1 are perturbed by iterated signed steps

    x_i <- Proj( x_i + step * sign(I_pert,loss(z_i, z_test)) ),

each step raising the retrained test loss by about (step / n) ||I_pert,loss||_1
to first order (MATH.md). Proj clips to the allowed set: by default images
whose 8-bit representation is unchanged (each pixel stays in the interval
that rounds to its original grey level: within 0.499/255 of it for images
stored in 8 bits, as in the paper), otherwise an L-infinity ball of the given
radius; always inside [0, 1]. After every step the Linear head on the frozen
features is retrained exactly (convex, Newton to |grad| <= 1e-9) and
I_pert,loss is recomputed at the new optimum.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .errors import InputError
from .frozen import FEATURES, check_two_classes, cross_entropy, features, fit_head, head_model
from .influence import Influence
from .inputs import row_indices
from .objective import Objective, is_integer

GREY_MARGIN = 1e-3  # grey levels kept clear of the rounding edge: far above float32's spacing (1.5e-5 of a level)
EIGHT_BIT = (0.5 - GREY_MARGIN) / 255  # inside half a grey level: rounding to 8 bits gives the original


@dataclass(frozen=True)
class Budget:
    """The allowed set and the steps: |x - x0|_inf <= radius (and 0 <= x <= 1); `steps` signed steps of `step`."""

    radius: float = EIGHT_BIT
    step: float | None = None  # default radius / 4
    steps: int = 10

    def __post_init__(self) -> None:
        for name in ("radius", "step"):
            value = getattr(self, name)
            if value is None and name == "step":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                    or value <= 0:
                example = f"radius={8 / 255:.6f} (8 grey levels)" if name == "radius" else \
                    f"step={EIGHT_BIT / 4:.6f} (an eighth of a grey level)"
                raise InputError(f"the attack {name} must be a finite number > 0 (pixels in [0, 1]), got {value!r}; "
                                 f"e.g. {example}")
            object.__setattr__(self, name, float(value))
        if not (is_integer(self.steps) and self.steps >= 1):
            raise InputError(f"the number of attack steps must be an integer >= 1, got {self.steps!r}")
        object.__setattr__(self, "steps", int(self.steps))

    @property
    def step_size(self) -> float:
        return self.radius / 4 if self.step is None else float(self.step)

    @property
    def eight_bit(self) -> bool:
        return self.radius == EIGHT_BIT

    def describe(self) -> str:
        where = "8-bit representation unchanged (each pixel within its grey level)" if self.eight_bit else \
            f"L-inf radius {self.radius:.4g} ({self.radius * 255:.3g}/255)"
        return f"{where}, {self.steps} signed steps of {self.step_size:.3g}"

    def bounds(self, X0: Tensor) -> tuple[Tensor, Tensor]:
        """Elementwise limits (lo, hi) of the allowed set around original pixels X0 (inside [0, 1]).

        The 8-bit budget keeps round(255 x) = round(255 x0), also once x is stored in float32: the grey
        level's interval, shrunk by GREY_MARGIN of a level at each end (it always holds x0 itself):
        x0 +- 0.499/255 for pixels stored in 8 bits, asymmetric for others (e.g. multiples of 1/16).
        Otherwise x0 +- radius.
        """
        if self.eight_bit:
            level, half = torch.round(X0 * 255), 0.5 - GREY_MARGIN
            lo, hi = torch.minimum((level - half) / 255, X0), torch.maximum((level + half) / 255, X0)
        else:
            lo, hi = X0 - self.radius, X0 + self.radius
        return lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)


def _pixels(images: np.ndarray, what: str) -> Tensor:
    """Images as float64, checked to be finite pixels in [0, 1]."""
    X = torch.as_tensor(np.array(images, dtype=np.float64))
    if not torch.isfinite(X).all():
        raise InputError(f"{what}: {int((~torch.isfinite(X)).sum())} NaN or infinite pixels; pixels must lie in [0, 1]")
    if X.numel() and (X.min() < 0 or X.max() > 1):
        raise InputError(f"{what} must have pixels in [0, 1], got values in [{float(X.min()):.3g}, "
                         f"{float(X.max()):.3g}]; divide 8-bit images by 255")
    return X


def project(X: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The closest point of the box {x : lo <= x <= hi} to each row of X (elementwise clipping)."""
    return torch.minimum(torch.maximum(X, lo), hi)


@dataclass
class AttackResult:
    """One attacked test point.

    train_indices (k,): the perturbed training points; X_original, X_perturbed (k, d);
    losses (steps + 1,): test loss L(z_test, theta) after retraining at each step (index 0: before);
    predictions (steps + 1,): predicted class of the test point at each step; flipped: the
    prediction changed from the label; theta: head parameters after the last step.
    """

    test_index: int
    label: int
    train_indices: np.ndarray
    X_original: np.ndarray
    X_perturbed: np.ndarray
    losses: list[float] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    theta: Tensor | None = None

    @property
    def flipped(self) -> bool:
        return self.predictions[-1] != self.label

    @property
    def steps_taken(self) -> int:
        return len(self.losses) - 1


class HeadAttack:
    """A frozen extractor with a convex Linear head on (X_train, y_train), ready to attack test points.

    X_train (n, d) in [0, 1]; y_train (n,) class labels; l2 the head's weight decay.
    The user's arrays are copied, never modified.
    """

    def __init__(self, extractor: nn.Module, X_train: np.ndarray, y_train: np.ndarray, l2: float = 0.01) -> None:
        if isinstance(l2, bool) or not (isinstance(l2, numbers.Real) and math.isfinite(l2) and l2 > 0):
            raise InputError(f"l2 must be a finite number > 0 (it makes the head's problem strictly convex), got {l2!r}")
        X = _pixels(X_train, "training images")
        labels = np.asarray(y_train).reshape(-1)
        if labels.dtype.kind not in "iu" or labels.size != X.shape[0] or (labels.size and labels.min() < 0):
            raise InputError(f"training labels must be one class index (an integer >= 0) per image: got {labels.size} "
                             f"{labels.dtype} labels for {X.shape[0]} images")
        self.y = torch.as_tensor(labels.astype(np.int64))
        check_two_classes(self.y)
        self.extractor, self.X, self.l2 = extractor, X, float(l2)
        self.A = features(extractor, X)
        if self.A.ndim != 2 or self.A.shape[1] != FEATURES:
            raise InputError(f"the extractor must map images to (n, {FEATURES}) features for the head, but it returns "
                             f"{tuple(self.A.shape)}")
        self.theta = fit_head(self.A, self.y, self.l2)

    @property
    def n(self) -> int:
        return self.X.shape[0]

    def model(self, theta: Tensor | None = None) -> nn.Sequential:
        """The extractor with the head at theta (default: trained on the clean data)."""
        return head_model(self.extractor, self.theta if theta is None else theta, int(self.y.max()) + 1)

    def head(self, theta: Tensor) -> nn.Linear:
        """The Linear head alone at theta: a model of the features (its Influence has the same H and s_test)."""
        return head_model(nn.Identity(), theta, int(self.y.max()) + 1)[1]

    def i_pert_loss(self, A: Tensor, X: Tensor, theta: Tensor, x: Tensor, y: Tensor, index: Tensor) -> Tensor:
        """I_pert,loss(z_i, z_test) for the training rows `index`, (k, d), at the head's optimum theta.

        s_test = H^{-1} grad L(z_test) from the head on the features A (closed form, exact
        solver); then -grad_x [s_test . grad_theta L((x_i, y_i))] through the frozen
        extractor. Equals Influence(self.model(theta)).fit((X, y)).pert_loss((x, y), index)[0]
        without re-running the extractor on every training image.
        """
        inf = Influence(self.head(theta), cross_entropy, l2=self.l2, solver="exact").fit((A, self.y))
        s_test = inf.s_test((features(self.extractor, x), y))[0]
        full = Objective(self.model(theta), cross_entropy, self.l2)
        return -full.input_grads(X[index], self.y[index], s_test)

    def test_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[float, int]:
        """(L(z_test, theta), predicted class) for one test point."""
        with torch.no_grad():
            out = self.model(theta)(x)
        return float(cross_entropy(out, y)[0]), int(out.argmax(1)[0])

    def rank(self, x_test: np.ndarray, y_test: int) -> np.ndarray:
        """Training indices (n,) by decreasing ||I_pert,loss(z_i, z_test)||_1 (the first-order gain of a signed step)."""
        x, y = self._test(x_test, y_test)
        pert = self.i_pert_loss(self.A, self.X, self.theta, x, y, torch.arange(self.n))
        return np.argsort(-pert.abs().flatten(1).sum(1).numpy(), kind="stable")

    def _test(self, x_test: np.ndarray, y_test: int) -> tuple[Tensor, Tensor]:
        """The test image as a batch of one (1, *image shape) and its label (1,), both checked."""
        x = _pixels(x_test, "the test image")
        if x.numel() != self.X[0].numel():
            raise InputError(f"the test image has {x.numel()} pixels, the training images {self.X[0].numel()}")
        classes = int(self.y.max()) + 1
        if getattr(y_test, "ndim", None) == 0:  # a 0-d tensor or array holding the label
            y_test = y_test.item()
        if not (is_integer(y_test) and 0 <= y_test < classes):
            raise InputError(f"the test label must be a class index in 0..{classes - 1}, got {y_test!r}")
        return x.reshape(1, *self.X.shape[1:]), torch.tensor([int(y_test)])

    def attack(self, x_test: np.ndarray, y_test: int, train_indices: np.ndarray | list[int], budget: Budget = Budget(),
               test_index: int = -1, stop_on_flip: bool = True) -> AttackResult:
        """Perturb the training points `train_indices` to raise the test loss of (x_test, y_test).

        Each of budget.steps iterations: I_pert,loss at the current optimum, one signed
        step, projection onto the allowed set, exact retraining of the head. Stops early
        once the prediction flips (unless stop_on_flip=False).
        """
        index = torch.as_tensor(row_indices(train_indices, self.n, "training indices"))
        if not index.numel():
            raise InputError("no training indices given; pass the rows to perturb (e.g. the top of rank())")
        x, y = self._test(x_test, y_test)
        X, A, theta = self.X.clone(), self.A.clone(), self.theta.clone()
        X0 = self.X[index]
        lo, hi = budget.bounds(X0)
        result = AttackResult(test_index, int(y_test), index.numpy(), X0.numpy().copy(), X0.numpy().copy())
        loss, pred = self.test_loss(theta, x, y)
        if pred != int(y_test):  # it would count as flipped before any step
            which = f"test point {test_index}" if test_index >= 0 else "the test point"
            raise InputError(f"{which} is already misclassified (predicted {pred}, label {int(y_test)}); attack a "
                             "correctly classified test point")
        result.losses.append(loss), result.predictions.append(pred)
        for _ in range(budget.steps):
            pert = self.i_pert_loss(A, X, theta, x, y, index)  # (k, d): n * d(retrained test loss) / d x_i
            X[index] = project(X[index] + budget.step_size * pert.sign(), lo, hi)
            A[index] = features(self.extractor, X[index])
            theta = fit_head(A, self.y, self.l2, theta0=theta)
            loss, pred = self.test_loss(theta, x, y)
            result.losses.append(loss), result.predictions.append(pred)
            if stop_on_flip and pred != int(y_test):
                break
        result.X_perturbed, result.theta = X[index].numpy(), theta
        return result


def flip_fractions(attacker: HeadAttack, X_test: np.ndarray, y_test: np.ndarray, test_indices: list[int],
                   counts: tuple[int, ...] = (1, 2, 10), budget: Budget = Budget(),
                   progress=lambda: None) -> dict[int, list[AttackResult]]:
    """Attack each test point with the top 1, 2, 10 (`counts`) training points by ||I_pert,loss||_1.

    Returns {count: [AttackResult per test point]}; the flip fraction for a count is
    the mean of result.flipped. progress() is called once per attack.
    """
    if not counts or not all(is_integer(c) and 1 <= c <= attacker.n for c in counts):
        raise InputError(f"counts must be numbers of training points, integers from 1 to {attacker.n}, got {counts!r}")
    out: dict[int, list[AttackResult]] = {c: [] for c in counts}
    for t in row_indices(test_indices, len(y_test), "test indices").tolist():
        order = attacker.rank(X_test[t], int(y_test[t]))
        for c in counts:
            out[c].append(attacker.attack(X_test[t], int(y_test[t]), order[:c], budget, test_index=t))
            progress()
    return out
