"""Understanding model behaviour (Koh & Liang 2017, section 5.1, Figure 4).

Two models on the same binary digit task: an RBF-kernel SVM (smooth hinge, `infl.rbf`)
and a frozen CNN with a trained Linear top layer (`infl.frozen`). For a test point,
I_up,loss(z_i, z_test) of every training point under each model, against the pixel
(Euclidean) distance ||x_i - x_test||, shows what each model leans on: the SVM on
training images close in pixel space, the CNN on images that share features.
Plots show -I_up,loss (positive = helpful: up-weighting z_i lowers the test loss).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy import stats
from torch import nn

from .errors import InputError, warn
from .frozen import BinaryTask, cross_entropy, train_head
from .influence import Influence
from .losses import make_smooth_hinge
from .rbf import rbf_svm, to_pm
from .report import figure_png, image_tag, pixels_png, summary_section, top_k, train_grid, write_page

SVM, CNN = "RBF SVM", "CNN features + Linear"


@dataclass(frozen=True)
class ModelView:
    """One model's view of a test point: scores I_up,loss (n,) (positive = harmful), its prediction and test loss."""

    name: str
    scores: np.ndarray
    predicted: int
    loss: float

    def helpful(self, k: int) -> np.ndarray:
        """The k most helpful training indices (most negative I_up,loss); fewer if fewer scores are negative."""
        return top_k(self.scores, k)[1]


@dataclass(frozen=True)
class Behaviour:
    """The test point, distances ||x_i - x_test|| (n,), training labels (n,) and both models' views."""

    test_index: int
    x_test: np.ndarray
    label: int
    distances: np.ndarray
    y_train: np.ndarray
    views: tuple[ModelView, ModelView]

    def summary(self, k: int = 10) -> dict[str, dict[str, float]]:
        """Per model: Spearman(|I_up,loss|, distance), mean distance of the k most helpful, their same-label share."""
        out = {}
        for v in self.views:
            top = v.helpful(k)
            varies = bool(np.ptp(v.scores) > 0)  # all-equal scores (e.g. all 0) have no rank correlation
            out[v.name] = {"spearman |influence| vs distance": float(stats.spearmanr(np.abs(v.scores),
                                                                                       self.distances)[0])
                           if varies else float("nan"),
                           f"mean distance of top {k} helpful": float(self.distances[top].mean()) if top.size
                           else float("nan"),
                           "mean distance of all": float(self.distances.mean()),
                           f"top {k} helpful with the test label": float(np.mean(self.y_train[top] == self.label))
                           if top.size else float("nan")}
        return out


def _views(name: str, model: nn.Module, loss_fn, l2: float, train: tuple, test: tuple, knob: str) -> list[ModelView]:
    """One ModelView per test point: one fit, then the (m, n) scores at once; `knob` names the model's l2 option
    in the advice for a test point whose scores are all 0."""
    inf = Influence(model, loss_fn, l2=l2, solver="exact").fit(train)
    scores = inf.scores(test).numpy()
    with torch.no_grad():
        out = model(test[0])
    predicted = out.argmax(1) if out.shape[1] > 1 else (out[:, 0] > 0).long()
    losses = loss_fn(out, test[1])
    flat = [i for i, row in enumerate(scores) if not np.any(row)]
    if flat:
        warn(f"{name}: every training point's influence is exactly 0 for {len(flat)} of the {len(scores)} test "
             "points: the loss's gradient there is 0 (the model is so sure of them that it underflowed), so nothing "
             f"can be ranked; choose another test point, or a larger {knob} (a less confident model)")
    return [ModelView(name, s, int(c), float(v)) for s, c, v in zip(scores, predicted, losses)]


def compare_behaviour(task: BinaryTask, extractor: nn.Module, test_index: int, *, l2: float = 0.01,
                      svm_l2: float = 1e-3, gamma: float | None = None, t: float = 0.1) -> Behaviour:
    """I_up,loss of every training point for test point `test_index` under the RBF SVM and the CNN head.

    SVM: rbf_svm(gamma, svm_l2, smooth hinge t), influence with the same loss and l2.
    CNN: the frozen extractor with a Linear(64, 2) head, cross-entropy, l2.
    """
    return compare_behaviours(task, extractor, [test_index], l2=l2, svm_l2=svm_l2, gamma=gamma, t=t)[0]


def compare_behaviours(task: BinaryTask, extractor: nn.Module, test_indices: list[int], *, l2: float = 0.01,
                       svm_l2: float = 1e-3, gamma: float | None = None, t: float = 0.1) -> list[Behaviour]:
    """compare_behaviour for many test points, each model fitted once: one Behaviour per index."""
    m = len(task.y_test)
    if not len(test_indices):
        raise InputError("no test indices given; pass at least one, e.g. [0]")
    for i in test_indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < m:
            raise InputError(f"test index {i!r} is out of range: the task has {m} test points (0 to {m - 1})")
    idx = list(test_indices)
    X, Xt = torch.as_tensor(task.X_train), torch.as_tensor(task.X_test[idx])
    y, yt = torch.as_tensor(task.y_train), torch.as_tensor(task.y_test[idx])
    svm = rbf_svm(X, y, gamma=gamma, l2=svm_l2, t=t)
    svm_views = _views(SVM, svm, make_smooth_hinge(t), svm_l2, (X, to_pm(y)), (Xt, to_pm(yt)), "svm_l2 (--svm-l2)")
    cnn_views = _views(CNN, train_head(extractor, task.X_train, task.y_train, l2), cross_entropy, l2, (X, y), (Xt, yt),
                       "l2 (--l2)")
    return [Behaviour(int(i), task.X_test[i], int(task.y_test[i]), np.linalg.norm(task.X_train - task.X_test[i], axis=1),
                      task.y_train, (a, b)) for i, a, b in zip(idx, svm_views, cnn_views)]


def behaviour_figure(result: Behaviour, digits: tuple[int, int]) -> Figure:
    """Figure 4 (top): -I_up,loss against Euclidean distance, one panel per model, coloured by training label."""
    fig = Figure(figsize=(9.5, 3.6))
    for col, v in enumerate(result.views, start=1):
        ax = fig.add_subplot(1, 2, col)
        for label, colour in ((0, "#2166ac"), (1, "#d6604d")):
            rows = result.y_train == label
            ax.scatter(result.distances[rows], -v.scores[rows], s=8, alpha=0.6, color=colour,
                       label=f"digit {digits[label]}" + (" (test label)" if label == result.label else ""))
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_xlabel("Euclidean distance to the test image (pixels)")
        ax.set_ylabel("-I_up,loss  (positive = helpful)" if col == 1 else "")
        ax.set_title(v.name, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_behaviour_report(out_dir: str | Path, result: Behaviour, task: BinaryTask, top: int = 8,
                           summary: Mapping[str, str] | None = None, title: str = "infl behaviour") -> Path:
    """Write influence_vs_distance.png and report.html (self-contained) into out_dir; returns the page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = figure_png(behaviour_figure(result, task.digits), dpi=110)
    (out / "influence_vs_distance.png").write_bytes(png)
    labels = np.asarray(task.digits)[task.y_train]
    stats_rows = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{value:.3g}</td>" for value in row.values())
                         + "</tr>" for name, row in result.summary(10).items())
    head = "".join(f"<th>{html.escape(k)}</th>" for k in next(iter(result.summary(10).values())))
    intro = (f"Test image {result.test_index} (digit {task.digits[result.label]}). Scores are I_up,loss (Koh &amp; "
             "Liang 2017): negative = helpful. The plot shows -I_up,loss against the pixel distance of each training "
             "image to the test image.")
    body = [image_tag(pixels_png(result.x_test, task.image_shape, (0, 1)), "the test image", "pixels test"),
            image_tag(png, "influence against distance for both models", "plot"),
            f"<table><tr><th>model</th>{head}</tr>{stats_rows}</table>"]
    for v in result.views:
        verdict = "correct" if v.predicted == result.label else "wrong"
        body.append(f"<h2>{html.escape(v.name)}: most helpful training images</h2><p class='note'>predicted digit "
                    f"{task.digits[v.predicted]} ({verdict}), test loss {v.loss:.4g}</p>")
        body.append(train_grid("helpful", v.helpful(top), v.scores, task.X_train, labels, task.image_shape, (0, 1)))
    if summary:
        body.append(summary_section(summary))
    return write_page(out / "report.html", title, body, intro)
