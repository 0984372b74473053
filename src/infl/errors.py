"""Exceptions raised by `infl`. Each message says what was expected, what was
received and how to fix it."""


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
