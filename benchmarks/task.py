"""The benchmark task shared by the scripts here: the paper's 10-class logistic
regression (l2 = 0.01) on the built-in MNIST split (4,000 train / 1,000 test)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infl.data import load_builtin
from infl.objective import Objective
from infl.train import assign, minimize

L2 = 0.01


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


@dataclass
class Task:
    model: nn.Module
    X: torch.Tensor
    y: torch.Tensor
    Xt: torch.Tensor
    yt: torch.Tensor
    l2: float = L2

    @property
    def train(self):
        return (self.X, self.y)

    def test(self, index=None):
        return (self.Xt, self.yt) if index is None else (self.Xt[index], self.yt[index])


def mnist_task(dtype: torch.dtype = torch.float64, cache: Path | None = None) -> Task:
    """Train (or load from `cache`) the logistic regression to its optimum; all 1,000 test points."""
    split = load_builtin("mnist")
    X = torch.tensor(split.X_train)
    y = torch.tensor(split.y_train)
    model = nn.Linear(X.shape[1], split.classes).double()
    obj = Objective(model, cross_entropy, L2)
    if cache is not None and cache.exists():
        theta = torch.load(cache)
    else:
        theta = minimize(obj, X, y, tol=1e-9)  # trained in float64 whatever dtype is asked for
        if cache is not None:
            torch.save(theta, cache)
    assign(model, obj, theta)
    return Task(model.to(dtype), X.to(dtype), y, torch.tensor(split.X_test, dtype=dtype), torch.tensor(split.y_test))


def misclassified(task: Task, k: int) -> list[int]:
    """The first k test indices the model gets wrong (the points the report explains)."""
    with torch.no_grad():
        wrong = (task.model(task.Xt).argmax(1) != task.yt).nonzero().squeeze(1)
    return wrong[:k].tolist()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def run_peers(task_npz: Path, out: Path, methods: str, extra: tuple[str, ...] = ()) -> list[dict]:
    """Run benchmarks/peers.py on a saved task; save each peer's scores as out/scores_<method>.npy.

    extra: more peers.py arguments (e.g. "--cg-maxiter", "100"). Returns rows {method, seconds,
    peak_rss_mib}; [] when the peers cannot run.
    """
    result = out / "peers_result.npz"
    result.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "peers.py"), "--task", str(task_npz),
                           "--out", str(result), "--kron-damping", "l2", "--methods", methods, *extra])
    if proc.returncode != 0 or not result.exists():
        print("peers could not run; see the messages above", file=sys.stderr)
        return []
    data = np.load(result)
    rows = []
    for key in data.files:
        if key.endswith("__scores") and key != "dense_reference__scores":
            name = key[: -len("__scores")]
            np.save(out / f"scores_{name}.npy", data[key])
            rows.append({"method": name, "seconds": float(data[f"{name}__seconds"]),
                         "peak_rss_mib": float(data[f"{name}__peak_rss_kib"]) / 1024})
    return rows
