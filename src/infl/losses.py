"""Per-example losses: multinomial cross-entropy, and the smooth hinge the paper uses for SVMs."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import InputError
from .objective import positive_number


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example multinomial logistic loss L(z, theta) of logits (b, classes) and labels (b,), shape (b,)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def temperature(t: object, name: str = "the smooth hinge's temperature t") -> float:
    """t as a float when it is a finite number > 0 (Python, NumPy or one-element tensor), else an InputError."""
    number = positive_number(t)
    if number is None:
        raise InputError(f"{name} must be a finite number > 0, got {t!r}")
    return number


def hinge_terms(margins: Tensor, t: float) -> Tensor:
    """t * log(1 + exp((1 - margins) / t)), elementwise, without overflow: where (1 - m) / t > 20 it is 1 - m itself
    (softplus with beta = 1 / t), so a huge margin or a tiny t gives the hinge's value, not inf.

    t must be at least the dtype's smallest normal number, else 1 / t overflows (an InputError says so)."""
    if t < torch.finfo(margins.dtype).tiny:
        raise InputError(f"the smooth hinge's t = {t!r} is below the smallest normal {margins.dtype} number; "
                         "use a larger t (the hinge is matched to within t log 2 anyway)")
    return F.softplus(1 - margins, beta=1 / t)


def smooth_hinge(outputs: Tensor, y: Tensor, t: float = 1e-3) -> Tensor:
    """SmoothHinge(s, t) = t * log(1 + exp((1 - s) / t)), s = y * f, per example (b,).

    outputs f: (b,) or (b, 1) scores of a linear SVM; y: labels in {-1, +1}.
    Tends to the hinge max(0, 1 - s) as t -> 0 and is twice differentiable
    for t > 0, so influence functions apply (the paper's section 4.1).
    """
    return hinge_terms(y * outputs.reshape(outputs.shape[0]), temperature(t))


def check_plus_minus_one(y: Tensor) -> None:
    """An InputError unless every label in y is -1 or +1 (a 0/1 label would give every 0 the constant loss)."""
    bad = torch.unique(y[(y != 1) & (y != -1)])
    if bad.numel():
        raise InputError(f"the smooth hinge needs labels -1 and +1, got {bad[:5].tolist()}; "
                         "map 0/1 labels with y = 2 * y - 1")


smooth_hinge.check_targets = check_plus_minus_one  # read by Objective.check_loss on all targets


def make_smooth_hinge(t: float) -> Callable[[Tensor, Tensor], Tensor]:
    """loss_fn(outputs, y) = smooth_hinge(outputs, y, t), for infl.Influence; labels -1 and +1."""
    t = temperature(t)
    loss = lambda outputs, y: smooth_hinge(outputs, y, t)  # noqa: E731
    loss.check_targets = check_plus_minus_one
    return loss
