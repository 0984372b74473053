"""Scores as a pandas DataFrame (pandas is optional: `pip install pandas`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import InputError


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise ImportError("infl.to_frame needs pandas, which is optional: pip install pandas "
                          "(or pip install 'infl[frames]')") from exc
    return pandas


def _column(values: Any, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{what} must hold one value per training point ({n}), got shape {arr.shape}")
    return arr


def to_frame(scores: Any, labels: Any = None, ids: Any = None, id_name: str | None = None) -> Any:
    """One row per training point: index, [id], [label], score, rank; in training order.

    scores: (n,) values for one test point, e.g. `inf.scores(test)[0]` (I_up,loss: positive = harmful,
        removing point i changes the test loss by about -score / n) or `inf.self_influence()`.
    labels: (n,) training labels; ids: (n,) the user's own ids, in a column named id_name (default:
        the name of a pandas Series, else "id").
    rank: 1 for the largest score (the most harmful point), n for the most negative (most helpful);
        `frame.sort_values("rank")` lists the most harmful first.
    """
    pd = _pandas()
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    if s.ndim == 2 and s.shape[0] == 1:
        s = s[0]
    if s.ndim != 1:
        raise InputError(f"to_frame takes the scores of one test point, shape (n,), got {s.shape}; "
                         "pass scores[i] for test point i")
    if not np.isfinite(s).all():
        raise InputError(f"to_frame got {int((~np.isfinite(s)).sum())} NaN or inf scores; check the solve "
                         "(inf.info) and the model before ranking")
    n = s.shape[0]
    columns: dict[str, Any] = {"index": np.arange(n)}
    if ids is not None:
        name = id_name or (getattr(ids, "name", None) if isinstance(ids, pd.Series) else None) or "id"
        if name in ("index", "label", "score", "rank"):
            raise InputError(f"id_name {name!r} clashes with a column of the frame; choose another id_name")
        columns[name] = _column(ids, n, "ids")
    if labels is not None:
        columns["label"] = _column(labels, n, "labels")
    columns["score"] = s
    columns["rank"] = pd.Series(-s).rank(method="first").astype(int).to_numpy()
    return pd.DataFrame(columns)
