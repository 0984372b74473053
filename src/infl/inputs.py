"""User data -> validated tensors on the model's dtype and device."""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from .errors import InputError


def _as_tensor(a: Any, what: str) -> Tensor:
    if isinstance(a, Tensor):
        return a.detach()
    try:
        arr = np.asarray(a)
        with warnings.catch_warnings():  # a read-only array (pandas, a memmap) is shared: infl never writes to it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.as_tensor(arr.copy() if any(step < 0 for step in arr.strides) else arr)  # e.g. X[::-1]
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a tensor or an array of numbers, got {type(a).__name__}: {exc}") from exc


def _from_dataset(data: Any, name: str) -> tuple[Tensor, Tensor]:
    items = [data[i] for i in range(len(data))]
    if not items:
        raise InputError(f"the {name} dataset is empty; influence needs at least one example")
    if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items[:1]):
        raise InputError(f"the {name} dataset must yield (x, y) pairs, got {type(items[0]).__name__}")
    xs = [_as_tensor(x, f"{name} x") for x, _ in items]
    ys = [_as_tensor(y, f"{name} y") for _, y in items]
    return torch.stack(xs), torch.stack(ys)


def to_tensors(data: Any, dtype: torch.dtype, device: torch.device, name: str = "train") -> tuple[Tensor, Tensor]:
    """(X, y) from a pair of tensors/arrays or a Dataset yielding (x, y).

    Floating inputs and targets are cast to `dtype` (the model's); integer
    targets (class labels) stay integer. Raises InputError on empty data,
    mismatched lengths, or NaN/inf.
    """
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise InputError(f"{name} must be a pair (X, y), got a sequence of length {len(data)}; for a list of "
                             "(x, y) examples pass (torch.stack(xs), torch.tensor(ys)), or a Dataset")
        X, y = _as_tensor(data[0], f"{name} X"), _as_tensor(data[1], f"{name} y")
    elif isinstance(data, dict):
        raise InputError(f"{name} must be a pair (X, y) of tensors or arrays, or a Dataset yielding (x, y); got a dict "
                         f"with keys {list(data)[:5]}: pass (data[<inputs key>], data[<labels key>])")
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        X, y = _from_dataset(data, name)
    else:
        loader = f": pass its dataset ({name}_loader.dataset); infl batches it itself" if hasattr(data, "dataset") \
            else ""
        raise InputError(f"{name} must be a pair (X, y) of tensors or arrays, or a Dataset yielding (x, y); "
                         f"got {type(data).__name__}{loader}")
    if X.ndim == 0 or y.ndim == 0:
        raise InputError(f"{name} X and y need a leading example dimension; got shapes "
                         f"{tuple(X.shape)} and {tuple(y.shape)}")
    if X.shape[0] != y.shape[0]:
        raise InputError(f"{name} X has {X.shape[0]} examples but y has {y.shape[0]}; "
                         "they must have one target per input")
    if X.shape[0] == 0:
        raise InputError(f"the {name} data is empty; influence needs at least one example")
    for arr, part in ((X, "X"), (y, "y")):
        _check_finite(arr, f"{name} {part}", "clean or drop them first")
    X = X.to(device=device, dtype=dtype) if X.is_floating_point() else X.to(device)
    y = y.to(device=device, dtype=dtype) if y.is_floating_point() else y.to(device)
    if y.dtype in _NARROW_INTEGERS:  # class labels: widened losslessly, as the losses index with int64
        y = y.long()
    for arr, part in ((X, "X"), (y, "y")):
        _check_finite(arr, f"{name} {part}", f"its values overflow the model's {str(dtype).removeprefix('torch.')} "
                      "(finite as given): rescale them, or use a float64 model (model.double())")
    return X, y


def _check_finite(arr: Tensor, what: str, fix: str) -> None:
    """InputError naming how many examples of `arr` (n, ...) hold NaN or inf, and `fix`."""
    if arr.is_floating_point() and not torch.isfinite(arr).all():
        bad = int((~torch.isfinite(arr)).reshape(arr.shape[0], -1).any(1).sum())
        raise InputError(f"{what} contains NaN or inf in {bad} example(s); {fix}")


_NARROW_INTEGERS = (torch.int8, torch.int16, torch.int32, torch.uint8)


def batches(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices covering range(n), each at most batch_size long."""
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def data_fingerprint(X: Tensor, y: Tensor, rows: int = 4096) -> str:
    """SHA-256 of the training inputs and targets (shape, dtype and values), read `rows` at a time."""
    h = hashlib.sha256(f"{tuple(X.shape)}{X.dtype}{tuple(y.shape)}{y.dtype}".encode())
    for part in (X, y):
        for r in batches(part.shape[0], rows):
            h.update(part[r].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())  # any dtype's bytes
    return h.hexdigest()


def row_indices(values: Any, n: int, what: str) -> np.ndarray:
    """values (any shape) as int64 indices into n rows, flattened; InputError naming `what` for a boolean
    mask, non-integer values or an index outside 0..n-1 (no negative indexing: -1 is more often a bug)."""
    given = np.asarray(values.cpu() if isinstance(values, Tensor) else values).reshape(-1)
    if given.dtype == bool:
        raise InputError(f"{what} must be indices, not a mask; pass np.flatnonzero(mask)")
    if given.size and given.dtype.kind not in "iu":
        raise InputError(f"{what} must be integers, got {given.dtype} values {given[:5].tolist()}")
    index = given.astype(np.int64)
    bad = index[(index < 0) | (index >= n)]
    if bad.size:
        raise InputError(f"{what} must be in 0..{n - 1} ({n} rows), got {bad[:5].tolist()}")
    return index
