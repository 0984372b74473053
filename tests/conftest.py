"""Small float64 problems, built fresh per test (never at import time)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from infl.objective import Objective
from infl.train import assign, minimize


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


@dataclass
class Problem:
    model: nn.Module
    loss_fn: object
    l2: float
    X: torch.Tensor
    y: torch.Tensor
    Xt: torch.Tensor
    yt: torch.Tensor

    @property
    def train(self):
        return (self.X, self.y)

    @property
    def test(self):
        return (self.Xt, self.yt)


def make_blobs(n: int, d: int, classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    centers = 1.5 * torch.randn(classes, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    X = centers[y] + torch.randn(n, d, generator=gen, dtype=torch.float64)
    return X, y


def trained(model: nn.Module, loss_fn, l2: float, X, y) -> nn.Module:
    obj = Objective(model, loss_fn, l2)
    assign(model, obj, minimize(obj, X, y, tol=1e-9, max_iter=2000))
    return model


@pytest.fixture
def logreg() -> Problem:
    """Multinomial logistic regression (5 features, 3 classes, bias), trained to the optimum."""
    return make_logreg()


@pytest.fixture
def mlp() -> Problem:
    """A tanh MLP 4 -> 6 -> 3, trained to the optimum of its l2-regularised objective."""
    return make_mlp()


def make_logreg() -> Problem:
    """The logreg fixture's problem, for code that runs outside pytest (launched processes)."""
    torch.manual_seed(0)
    X, y = make_blobs(90, 5, 3, seed=1)
    Xt, yt = make_blobs(12, 5, 3, seed=2)
    model = trained(nn.Linear(5, 3).double(), cross_entropy, 0.05, X, y)
    return Problem(model, cross_entropy, 0.05, X, y, Xt, yt)


def make_mlp() -> Problem:
    """The mlp fixture's problem, for code that runs outside pytest."""
    torch.manual_seed(0)
    X, y = make_blobs(60, 4, 3, seed=3)
    Xt, yt = make_blobs(8, 4, 3, seed=4)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return Problem(trained(model, cross_entropy, 0.05, X, y), cross_entropy, 0.05, X, y, Xt, yt)
