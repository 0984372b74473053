"""A frozen CNN feature extractor with a trainable Linear head: the paper's Inception setting, on digits.

The extractor is a small CNN trained once (seeded) on the digit classes that
are NOT part of the binary task, then frozen (requires_grad=False, float64,
eval mode). The binary task trains only the top `nn.Linear(d, 2)` on its
features, with mean cross-entropy + (l2/2)||theta||^2: a convex problem that
`fit_head` solves to tight convergence, and for which `infl.Influence` uses
its closed-form Linear-head path. Inputs stay flat, (b, h * w) in [0, 1], so
I_pert,loss comes back shaped like the training images.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Split
from .errors import InputError, warn
from .store import write_atomic

FEATURES = 64
EPOCHS = 3  # Adam passes over the other digits: the README's and the commands' default
HEAD_TOL = 1e-9  # max |grad R| of the trained head


def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy L(z, theta), (b,)."""
    return F.cross_entropy(outputs, targets, reduction="none")


class DigitCNN(nn.Module):
    """Flat images (b, h * w) -> features (b, 64): two 5x5 conv layers (SiLU, average pooling) and a dense layer.

    Smooth everywhere (SiLU, average pooling), so second derivatives in x exist.
    """

    def __init__(self, image_shape: tuple[int, int]) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.conv = nn.Sequential(
            nn.Conv2d(1, 8, 5, padding=2), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(8, 16, 5, padding=2), nn.SiLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.dense = nn.Sequential(nn.Linear(16 * 16, FEATURES), nn.SiLU())

    def forward(self, X: Tensor) -> Tensor:
        return self.dense(self.conv(X.reshape(-1, 1, *self.image_shape)))


@dataclass(frozen=True, eq=False)
class BinaryTask:
    """Two digit classes of a built-in split, relabelled 0 (digits[0]) and 1 (digits[1]).

    X: float64 (n, h * w) in [0, 1]; y: int64 (n,) in {0, 1}; *_index: rows of the original split.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    digits: tuple[int, int]
    image_shape: tuple[int, int]
    name: str


def binary_task(split: Split, digits: tuple[int, int]) -> BinaryTask:
    """The points of `split` whose label is one of the two `digits`, labelled 0 and 1."""
    if split.image_shape is None:
        raise InputError(f"{split.name} is not image data; the frozen CNN needs images (image_shape)")
    a, b = (int(d) for d in digits)
    present = set(np.unique(split.y_train).tolist())
    if a == b:
        raise InputError(f"the binary task needs two different digit classes, got {a} and {b}; pick e.g. 4 9")
    missing = [d for d in (a, b) if d not in present]
    if missing:
        raise InputError(f"digit class {missing[0]} has no training points in {split.name} "
                         f"(classes present: {sorted(present)}); pick two of those")
    tr = np.flatnonzero(np.isin(split.y_train, (a, b)))
    te = np.flatnonzero(np.isin(split.y_test, (a, b)))
    if not len(te):
        raise InputError(f"{split.name} has no test points of digits {a} or {b}; pick two other classes")
    relabel = lambda y: (y == b).astype(np.int64)  # noqa: E731
    return BinaryTask(split.X_train[tr], relabel(split.y_train[tr]), split.X_test[te], relabel(split.y_test[te]),
                      tr, te, (a, b), split.image_shape, f"{split.name} {a} vs {b}")


def check_two_classes(y: np.ndarray | Tensor, what: str = "training labels") -> None:
    """Refuse labels with fewer than two classes: no decision boundary to learn or to attack."""
    classes = np.unique(np.asarray(y))
    if len(classes) < 2:
        raise InputError(f"the {what} hold a single class ({classes.tolist()}); a classifier and its influence "
                         "need at least two classes: add points of another class")


# --- the extractor ----------------------------------------------------------------------


def train_extractor(X: np.ndarray, y: np.ndarray, image_shape: tuple[int, int], *, seed: int = 0,
                    epochs: int = EPOCHS, batch_size: int = 64) -> DigitCNN:
    """A DigitCNN trained (Adam, float32, `epochs` passes, seeded) to classify (X, y), then frozen in float64."""
    check_two_classes(y, "extractor's training labels")
    torch.manual_seed(seed)
    classes = np.unique(y)
    targets = torch.as_tensor(np.searchsorted(classes, y))
    inputs = torch.as_tensor(X, dtype=torch.float32)
    net = DigitCNN(image_shape)
    clf = nn.Sequential(net, nn.Linear(FEATURES, len(classes)))
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(targets), generator=gen).split(batch_size):
            opt.zero_grad()
            F.cross_entropy(clf(inputs[rows]), targets[rows]).backward()
            opt.step()
    return freeze(net)


def freeze(net: DigitCNN) -> DigitCNN:
    """The network in float64, eval mode, with requires_grad=False on every parameter."""
    net = net.double().eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def default_cache() -> Path:
    """$XDG_CACHE_HOME/infl, or ~/.cache/infl."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infl"


def load_extractor(split: Split, digits: tuple[int, int], *, cache: str | Path | None = None, seed: int = 0,
                   epochs: int = EPOCHS) -> tuple[DigitCNN, Path]:
    """The frozen extractor for a binary task: trained on the classes of `split` other than `digits`.

    Trained once and cached as a state dict under `cache` (default: default_cache()),
    keyed by the data, the excluded digits, the seed and the epochs. Returns (net, file).
    """
    folder = Path(cache if cache is not None else default_cache())
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the extractor cache {folder} is a file, not a folder; pass a folder (--cache DIR)")
    keep = ~np.isin(split.y_train, tuple(digits))
    X, y = split.X_train[keep], split.y_train[keep]
    data_id = hashlib.sha256(np.ascontiguousarray(X).tobytes() + y.tobytes()).hexdigest()[:12]
    path = folder / f"cnn-{split.name}-without-{'-'.join(map(str, digits))}-seed{seed}-e{epochs}-{data_id}.pt"
    if path.exists():
        net = _load_cached(path, split.image_shape)
        if net is not None:
            return freeze(net), path
    net = train_extractor(X, y, split.image_shape, seed=seed, epochs=epochs)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    write_atomic(path, buffer.getvalue())  # a run killed while saving leaves no partial file
    return net, path


def _load_cached(path: Path, image_shape: tuple[int, int]) -> DigitCNN | None:
    """The cached extractor, or None with a warning when the file cannot be read as one (it is retrained)."""
    net = DigitCNN(image_shape)
    try:
        net.load_state_dict(torch.load(path, weights_only=True))
    except Exception as error:  # a truncated or foreign file: torch raises several kinds
        warn(f"the cached extractor {path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
             "training it again and replacing the file")
        return None
    return net


# --- the head -----------------------------------------------------------------------------


def head_model(extractor: nn.Module, theta: Tensor | None = None, classes: int = 2) -> nn.Sequential:
    """nn.Sequential(extractor, nn.Linear(64, classes)) in float64; the head's parameters set to theta if given."""
    head = nn.Linear(FEATURES, classes).double()
    if theta is not None:
        with torch.no_grad():
            head.weight.copy_(theta[: classes * FEATURES].view(classes, FEATURES))
            head.bias.copy_(theta[classes * FEATURES:])
    return nn.Sequential(extractor, head)


def features(extractor: nn.Module, X: np.ndarray | Tensor) -> Tensor:
    """The extractor's features (n, 64) in float64."""
    with torch.no_grad():
        return extractor(torch.as_tensor(X, dtype=torch.float64))


def fit_head(A: Tensor, y: Tensor, l2: float, theta0: Tensor | None = None, max_iter: int = 100) -> Tensor:
    """theta = (W.flatten(), b) minimising mean cross-entropy of W a_i + b + (l2/2)||theta||^2, to |grad| <= 1e-9.

    Newton's method with backtracking on closed-form gradient and Hessian (the problem is
    convex and small: p = classes * 65). A: features (n, d); y: labels (n,); theta0
    warm-starts (default zeros). Returns (p,).
    """
    check_two_classes(y)
    n, d = A.shape
    C = int(y.max()) + 1
    Ab, Y = torch.cat([A, torch.ones(n, 1, dtype=A.dtype)], 1), F.one_hot(y, C).to(A.dtype)
    T = torch.zeros(C, d + 1, dtype=A.dtype) if theta0 is None else _to_rows(theta0, C, d)  # rows [W_c, b_c]
    risk = lambda T: F.cross_entropy(Ab @ T.T, y) + 0.5 * l2 * T.square().sum()  # noqa: E731
    for _ in range(max_iter):
        P = torch.softmax(Ab @ T.T, 1)
        g = (P - Y).T @ Ab / n + l2 * T  # (C, d + 1)
        if g.abs().max() <= HEAD_TOL:
            break
        Lam = torch.diag_embed(P) - P.unsqueeze(2) * P.unsqueeze(1)  # (n, C, C)
        H = torch.einsum("ice,ij,ik->cjek", Lam, Ab, Ab).reshape(C * (d + 1), -1) / n
        H.diagonal().add_(l2)
        step = torch.linalg.solve(H, g.reshape(-1)).view(C, d + 1)
        value, slope, t = risk(T), float((g * step).sum()), 1.0
        while risk(T - t * step) > value - 1e-4 * t * slope and t > 1e-10:
            t /= 2
        if t <= 1e-10:  # no decrease left at float64 precision
            break
        T = T - t * step
    if g.abs().max() > 1e-6:
        warn(f"the head's Newton iterations stopped with gradient max {float(g.abs().max()):.2e} > 1e-6 "
             "(the features may be badly scaled); influence assumes the optimum")
    return torch.cat([T[:, :d].reshape(-1), T[:, d]])


def _to_rows(theta: Tensor, C: int, d: int) -> Tensor:
    """theta = (W.flatten(), b) -> rows [W_c, b_c], (C, d + 1)."""
    return torch.cat([theta[: C * d].view(C, d), theta[C * d:].view(C, 1)], 1)


def train_head(extractor: nn.Module, X: np.ndarray, y: np.ndarray, l2: float) -> nn.Sequential:
    """The frozen extractor with a Linear head trained to the optimum on (X, y)."""
    theta = fit_head(features(extractor, X), torch.as_tensor(y), l2)
    return head_model(extractor, theta, int(y.max()) + 1)


def predict(model: nn.Module, X: np.ndarray | Tensor) -> np.ndarray:
    """Predicted classes (n,)."""
    with torch.no_grad():
        return model(torch.as_tensor(X, dtype=torch.float64)).argmax(1).numpy()


__all__ = [
    "BinaryTask",
    "DigitCNN",
    "binary_task",
    "check_two_classes",
    "cross_entropy",
    "default_cache",
    "features",
    "fit_head",
    "freeze",
    "head_model",
    "load_extractor",
    "predict",
    "train_extractor",
    "train_head",
]
