"""Per-example losses: multinomial cross-entropy, and the smooth hinge the paper uses for SVMs."""

from __future__ import annotations

from typing import Callable

import torch.nn.functional as F
from torch import Tensor

from .errors import InputError


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example multinomial logistic loss L(z, theta) of logits (b, classes) and labels (b,), shape (b,)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def smooth_hinge(outputs: Tensor, y: Tensor, t: float = 1e-3) -> Tensor:
    """SmoothHinge(s, t) = t * log(1 + exp((1 - s) / t)), s = y * f, per example (b,).

    outputs f: (b,) or (b, 1) scores of a linear SVM; y: labels in {-1, +1}.
    Tends to the hinge max(0, 1 - s) as t -> 0 and is twice differentiable
    for t > 0, so influence functions apply (the paper's section 4.1).
    """
    if not t > 0:
        raise InputError(f"the smooth hinge needs a temperature t > 0, got {t!r}")
    s = y * outputs.reshape(outputs.shape[0])
    return t * F.softplus((1 - s) / t)


def make_smooth_hinge(t: float) -> Callable[[Tensor, Tensor], Tensor]:
    """loss_fn(outputs, y) = smooth_hinge(outputs, y, t), for infl.Influence."""
    if not t > 0:
        raise InputError(f"the smooth hinge needs a temperature t > 0, got {t!r}")
    return lambda outputs, y: smooth_hinge(outputs, y, t)
