"""Self-contained HTML reports: the `infl explain` page, the leave-one-out figure, and the
building blocks every tool's report uses (html_page, write_page, image_tag,
examples_grid, figure_section, summary_section).

Everything is inline: figures are base64 PNG data URIs drawn with matplotlib's
Agg renderer (no pyplot state), the CSS sits in the page, and there is no
JavaScript and no external link. Scores follow MATH.md: I_up,loss(z_i, z_test),
positive = harmful (upweighting z_i raises the test loss), most negative = most
helpful; removing z_i changes the test loss by about -I_up,loss / n.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imsave

from .errors import InputError
from .validate import LeaveOneOut, correlations

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
.point { display: flex; gap: 2em; align-items: flex-start; margin-bottom: 2em; } .point > div { flex: 1; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, 8.5em); gap: .6em; margin-bottom: 1em; }
figure { margin: 0; text-align: center; font-size: .8em; }
img.pixels { width: 7em; height: 7em; image-rendering: pixelated; border: 1px solid #ddd; }
img.test { width: 12em; height: 12em; } img.plot { max-width: 100%; }
.harmful figcaption b { color: #b2182b; } .helpful figcaption b { color: #2166ac; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; text-align: left; border-bottom: 1px solid #eee; }
.note { color: #555; font-size: .9em; }
.warnings { background: #fff4e5; border-left: 4px solid #e08a00; padding: .3em 1em; }
"""

RUN_WARNINGS: list[str] = []  # the running command's warnings (the CLI records them); atop every page it writes


@dataclass(frozen=True)
class ExplainedPoint:
    """One explained test point: x (d,), labels, its test loss and scores (n_train,) of I_up,loss."""

    index: int
    x: np.ndarray
    label: int
    predicted: int
    loss: float
    scores: np.ndarray


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(harmful, helpful) training indices, up to k each: the largest positive and the most negative I_up,loss
    scores (n,); fewer where fewer points have a score of that sign (a point is never listed under both)."""
    order = np.argsort(scores, kind="stable")
    harmful, helpful = order[::-1][:k], order[:k]
    return harmful[scores[harmful] > 0], helpful[scores[helpful] < 0]


# --- figures --------------------------------------------------------------------------


def data_uri(png: bytes) -> str:
    """png bytes as a data: URI, for an <img src> that needs no file or network."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes by Agg."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def pixels_png(x: np.ndarray, shape: tuple[int, int], value_range: tuple[float, float]) -> bytes:
    """A grey image (dark = high value) of x (d,) reshaped to `shape`, one PNG pixel per value."""
    buffer = io.BytesIO()
    low, high = value_range
    imsave(buffer, x.reshape(shape), cmap="gray_r", vmin=low, vmax=high, format="png")
    return buffer.getvalue()


def features_png(x: np.ndarray, value_range: tuple[float, float]) -> bytes:
    """A bar chart of the d features of x (d,), for data that are not images: one filled step outline (one artist
    whatever d; a bar per feature took a second per chart at d = 2,000)."""
    fig = Figure(figsize=(2.2, 1.6))
    ax = fig.add_subplot()
    ax.stairs(x, np.arange(len(x) + 1) - 0.5, fill=True, color="#555", baseline=0)
    ax.set_ylim(min(value_range[0], 0), value_range[1])
    ax.set_xlabel("feature", fontsize=7)
    ax.tick_params(labelsize=6)
    return figure_png(fig)


def loo_figure(predicted: np.ndarray, actual: np.ndarray) -> Figure:
    """Koh & Liang's Figure 2 (left): x = actual, y = predicted change in test loss, with y = x.

    predicted = -(1/n) I_up,loss (k,); actual = L(z_test, theta_{-j}) - L(z_test, theta_hat) (k,).
    """
    predicted, actual = np.asarray(predicted, float).ravel(), np.asarray(actual, float).ravel()
    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.add_subplot()
    ax.scatter(actual, predicted, s=18, color="#2166ac", zorder=3)
    both = np.concatenate([actual, predicted]) if actual.size else np.zeros(1)
    low, high = float(both.min()), float(both.max())
    pad = 0.05 * (high - low or 1.0)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="#888", lw=1, zorder=2, label="y = x")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("actual diff in test loss (retrained)")
    ax.set_ylabel("predicted diff in test loss  -(1/n) I_up,loss")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    title = f"{actual.size} points removed"
    if actual.size >= 3 and np.ptp(actual) > 0 and np.ptp(predicted) > 0:
        pearson, spearman = correlations(predicted, actual)
        title = f"Pearson R = {pearson:.3f}, Spearman = {spearman:.3f}"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_loo(predicted: np.ndarray, actual: np.ndarray, path: str | Path) -> Path:
    """Save `loo_figure(predicted, actual)` as a PNG at `path` (for benchmarks); returns the path."""
    path = Path(path)
    path.write_bytes(figure_png(loo_figure(predicted, actual), dpi=150))
    return path


# --- HTML building blocks (shared by every tool's report) ---------------------------


def escaped(value: object) -> str:
    """str(value) escaped for HTML text (labels may be a user's class names)."""
    return html.escape(str(value))


def image_tag(png: bytes, alt: str, css: str = "pixels") -> str:
    """An inline <img> of png bytes; css "pixels" (small example), "pixels test" (larger) or "plot"."""
    return f'<img src="{data_uri(png)}" class="{css}" alt="{html.escape(alt)}">'


def example_png(x: np.ndarray, shape: tuple[int, int] | None, value_range: tuple[float, float]) -> bytes:
    """One example x (d,): an image when `shape` is given, else a bar chart of its features."""
    return pixels_png(x, shape, value_range) if shape else features_png(x, value_range)


def examples_grid(kind: str, indices: Sequence[int], captions: Sequence[str], X: np.ndarray,
                  shape: tuple[int, int] | None, value_range: tuple[float, float]) -> str:
    """A grid of examples X[i] (X (n, d)), each over its caption (HTML, trusted); `kind` is a CSS class
    ("harmful" or "helpful" colour the bold part of captions)."""
    cells = []
    for i, caption in zip(indices, captions):
        tag = image_tag(example_png(X[i], shape, value_range), f"training point {i}")
        cells.append(f"<figure>{tag}<figcaption>{caption}</figcaption></figure>")
    return f'<div class="grid {kind}">{"".join(cells)}</div>'


def figure_section(title: str, fig: Figure, note: str = "", alt: str | None = None) -> str:
    """An <h2> section holding one matplotlib figure as an inline PNG, after an optional note (plain text)."""
    text = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return f"<h2>{html.escape(title)}</h2>{text}{image_tag(figure_png(fig), alt or title, 'plot')}"


def table_section(title: str, header: Sequence[str], rows: Sequence[Sequence[object]], note: str = "") -> str:
    """An <h2> section holding a table (cells are escaped), after an optional note (plain text)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    text = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return f"<h2>{html.escape(title)}</h2>{text}<table><tr>{head}</tr>{body}</table>"


def summary_section(summary: Mapping[str, str]) -> str:
    """The "Run summary" table: one row per (name, value)."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in summary.items())
    return f"<h2>Run summary</h2><table>{rows}</table>"


def value_range(*arrays: np.ndarray) -> tuple[float, float]:
    """Common grey scale (low, high) for every picture of a report: the range of all the arrays."""
    values = np.concatenate([np.asarray(a, float).ravel() for a in arrays])
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low, low + 1.0)


def html_page(title: str, sections: Sequence[str], intro: str = "") -> str:
    """A whole self-contained page: <h1>title</h1>, an optional intro note (HTML), the warnings of the run so far
    (RUN_WARNINGS, if any), then the sections (HTML)."""
    note = f"<p class='note'>{intro}</p>" if intro else ""
    if RUN_WARNINGS:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in RUN_WARNINGS)
        note += f"<div class='warnings'><h2>Warnings ({len(RUN_WARNINGS)})</h2><ul>{items}</ul></div>"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{note}{''.join(sections)}"
            "</body></html>\n")


def write_page(path: str | Path, title: str, sections: Sequence[str], intro: str = "") -> Path:
    """Write html_page(title, sections, intro) to `path` as UTF-8; returns the path."""
    path = Path(path)
    path.write_text(html_page(title, sections, intro), encoding="utf-8")
    return path


# --- the explain report ---------------------------------------------------------------


def train_grid(kind: str, indices: np.ndarray, scores: np.ndarray, X_train: np.ndarray, y_train: np.ndarray,
                shape: tuple[int, int] | None, value_range: tuple[float, float]) -> str:
    """A grid of training examples, each captioned with its index, label and score."""
    captions = [f"#{i} &middot; label {escaped(y_train[i])}<br><b>{scores[i]:+.3g}</b>" for i in indices]
    return examples_grid(kind, indices, captions, X_train, shape, value_range)


def _point_section(point: ExplainedPoint, top: int, X_train: np.ndarray, y_train: np.ndarray,
                   shape: tuple[int, int] | None, value_range: tuple[float, float]) -> str:
    """The test point, then its top-k harmful and top-k helpful training points."""
    harmful, helpful = top_k(point.scores, top)
    verdict = "correct" if point.label == point.predicted else "wrong"
    test_tag = image_tag(example_png(point.x, shape, value_range), f"test point {point.index}", "pixels test")
    grid = lambda kind, idx: train_grid(kind, idx, point.scores, X_train, y_train, shape, value_range)  # noqa: E731
    return (
        f"<h2>Test point {point.index}</h2><div class='point'><figure>{test_tag}<figcaption>true label "
        f"<b>{escaped(point.label)}</b>, predicted <b>{escaped(point.predicted)}</b> ({verdict})<br>test loss "
        f"{point.loss:.4g}"
        f"</figcaption></figure><div><h3>Most harmful: I_up,loss &gt; 0 (upweighting raises the test loss)</h3>"
        f"{grid('harmful', harmful)}<h3>Most helpful: I_up,loss &lt; 0 (upweighting lowers the test loss)</h3>"
        f"{grid('helpful', helpful)}</div></div>"
    )


def _loo_section(loo: LeaveOneOut, test_index: int) -> str:
    """The leave-one-out scatter for one test point (row 0 of `loo`) and its correlations."""
    png = figure_png(loo_figure(loo.predicted[0], loo.actual[0]))
    return (
        f"<h2>Leave-one-out check (test point {test_index})</h2>"
        f"<p class='note'>Each of {len(loo.indices)} training points was removed and the model retrained to "
        "the optimum; the predicted change is -(1/n) I_up,loss. Pearson R = "
        f"{loo.pearson[0]:.4f}, Spearman = {loo.spearman[0]:.4f}.</p>"
        f"{image_tag(png, 'predicted against actual change in test loss', 'plot')}"
    )


def write_explain_report(path: str | Path, *, points: Sequence[ExplainedPoint], X_train: np.ndarray,
                         y_train: np.ndarray, image_shape: tuple[int, int] | None, top: int = 5,
                         loo: LeaveOneOut | None = None, loo_test_index: int | None = None,
                         summary: Mapping[str, str] | None = None, title: str = "infl explain") -> Path:
    """Write one self-contained HTML page explaining `points`; returns its path.

    X_train (n, d), y_train (n,); image_shape (h, w) with h * w = d draws images,
    None draws feature bar charts. `loo`: the leave-one-out result for test
    point `loo_test_index` (row 0 is used).
    """
    if image_shape is not None and math.prod(image_shape) != X_train.shape[1]:
        raise InputError(f"image_shape {image_shape} does not hold d = {X_train.shape[1]} features; "
                         "pass the shape of one image, or None for non-image data")
    scale = value_range(X_train, *[p.x for p in points])
    intro = ("Scores are I_up,loss(z_i, z_test) (Koh &amp; Liang 2017): positive = harmful, negative = helpful. "
             "Removing z_i changes the test loss by about -score / n.")
    body = [_point_section(p, top, X_train, y_train, image_shape, scale) for p in points]
    if loo is not None:
        body.append(_loo_section(loo, loo_test_index if loo_test_index is not None else points[0].index))
    if summary:
        body.append(summary_section(summary))
    return write_page(path, title, body, intro)
