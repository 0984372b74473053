"""infl: which training examples made my model predict this? Influence functions for PyTorch.

    inf = infl.Influence(model, loss_fn, l2=0.01, solver="exact").fit((X_train, y_train))
    S = inf.scores((X_test, y_test))     # (n_test, n_train) I_up,loss

Definitions, signs and scalings: MATH.md (Koh & Liang 2017).
"""

from .errors import CurvatureError, DivergenceError, InflError, InputError, NotFittedError
from .index import Index
from .influence import Influence
from .solvers import CG, Arnoldi, Exact, LiSSA, SolveInfo

__all__ = ["Arnoldi", "CG", "CurvatureError", "DivergenceError", "Exact", "Index", "Influence", "InflError", "InputError",
           "LiSSA", "NotFittedError", "SolveInfo"]
__version__ = "0.1.0"
