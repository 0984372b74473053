"""Exceptions raised by `infl`, and its warnings. Each message says what was expected, what was
received and how to fix it."""

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


_PACKAGE = str(Path(__file__).resolve().parent)


def warn(message: str) -> None:
    """warnings.warn (UserWarning) pointed at the caller's own code: the first frame outside this package."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level + 1)
