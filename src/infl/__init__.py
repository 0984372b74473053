"""infl: which training examples made my model predict this? Influence functions for PyTorch.

    inf = infl.Influence(model, loss_fn, l2=0.01, solver="exact").fit((X_train, y_train))
    S = inf.scores((X_test, y_test))     # (n_test, n_train) I_up,loss

Definitions, signs and scalings: MATH.md (Koh & Liang 2017).
"""

from .errors import CurvatureError, DivergenceError, InflError, InputError, NotFittedError
from .frame import to_frame
from .index import Index
from .influence import Influence
from .sklearn import from_sklearn
from .solvers import CG, EKFAC, KFAC, Arnoldi, Exact, LiSSA, SolveInfo

__all__ = ["Arnoldi", "CG", "CurvatureError", "DivergenceError", "EKFAC", "Exact", "Index", "Influence", "InflError",
           "InputError", "KFAC", "LiSSA", "NotFittedError", "SolveInfo", "from_sklearn", "to_frame"]
__version__ = "0.1.0"
