"""Exceptions raised by `infl`, and its warnings. Each message says what was expected, what was
received and how to fix it."""

import os
import sys
import warnings
from pathlib import Path


class InflError(Exception):
    """Base class of every error `infl` raises on purpose."""


class InputError(InflError, ValueError):
    """A model, loss, data set or setting that `infl` cannot use as given."""


class NotFittedError(InflError, RuntimeError):
    """A query made before `Influence.fit`."""


class CurvatureError(InflError, ArithmeticError):
    """The curvature is not positive definite where a solver needs it to be."""


class DivergenceError(InflError, ArithmeticError):
    """An iterative solver diverged instead of converging."""


_PACKAGE = os.path.realpath(Path(__file__).parent) + os.sep


def _inside(filename: str) -> bool:
    """Whether a frame's file lies in this package (through symlinks too)."""
    return os.path.realpath(filename).startswith(_PACKAGE)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """warnings.warn pointed at the caller's own code: the first frame outside this package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _inside(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level + 1)
