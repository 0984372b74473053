"""Plots and a self-contained HTML report of training-set attacks (`infl attack`).

Every figure is written as a PNG into the output folder and inlined in the
page as a base64 data URI (no network, no JavaScript), with report.py's style.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .attack import AttackResult
from .report import figure_png, image_tag, summary_section, write_page

REPORT_NAME = "report.html"


def flip_fraction(results: Sequence[AttackResult]) -> float:
    """Fraction of attacked test points whose prediction flipped."""
    return float(np.mean([r.flipped for r in results])) if results else float("nan")


def pairs_figure(result: AttackResult, x_test: np.ndarray, shape: tuple[int, int]) -> Figure:
    """The test image, then per perturbed training image: original, perturbed, and the change (x 255 grey levels)."""
    k = len(result.train_indices)
    fig = Figure(figsize=(1.9 * 3 + 1.9, 2.0 * k))
    grid = fig.add_gridspec(k, 4)
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(x_test.reshape(shape), cmap="gray_r", vmin=0, vmax=1)
    verdict = "flipped" if result.flipped else "not flipped"
    ax.set_title(f"test {result.test_index}: class {result.label}\n{verdict}", fontsize=8)
    ax.axis("off")
    change = (result.X_perturbed - result.X_original) * 255
    bound = max(float(np.abs(change).max()), 1e-12)
    for row, i in enumerate(result.train_indices):
        panels = ((result.X_original[row], "gray_r", 0, 1, f"train {i}: original"),
                  (result.X_perturbed[row], "gray_r", 0, 1, "perturbed"),
                  (change[row], "RdBu_r", -bound, bound, f"change, max {bound:.2g}/255"))
        for col, (img, cmap, lo, hi, title) in enumerate(panels, start=1):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(img.reshape(shape), cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


def losses_figure(results: Mapping[int, Sequence[AttackResult]]) -> Figure:
    """Test loss after each attack step (retrained), one line per attacked test point, one panel per count."""
    fig = Figure(figsize=(3.2 * len(results), 3.0))
    for col, (count, rows) in enumerate(results.items(), start=1):
        ax = fig.add_subplot(1, len(results), col)
        for r in rows:
            ax.plot(range(len(r.losses)), r.losses, marker="o", ms=3, color="#b2182b" if r.flipped else "#2166ac")
        ax.axhline(np.log(2), color="#888", lw=0.8, ls="--")
        ax.set_title(f"{count} perturbed: {flip_fraction(rows):.0%} flipped", fontsize=9)
        ax.set_xlabel("attack step")
        ax.set_ylabel("test loss (retrained)" if col == 1 else "")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _table(results: Mapping[int, Sequence[AttackResult]]) -> str:
    rows = "".join(f"<tr><td>{c}</td><td>{len(r)}</td><td>{sum(a.flipped for a in r)}</td>"
                   f"<td>{flip_fraction(r):.1%}</td><td>{np.mean([a.losses[-1] - a.losses[0] for a in r]):+.4g}</td></tr>"
                   for c, r in results.items())
    return ("<table><tr><th>training images perturbed</th><th>test images attacked</th><th>flipped</th>"
            f"<th>flip fraction</th><th>mean rise in test loss</th></tr>{rows}</table>")


def write_attack_report(out_dir: str | Path, results: Mapping[int, Sequence[AttackResult]], X_test: np.ndarray,
                        image_shape: tuple[int, int], summary: Mapping[str, str] | None = None,
                        title: str = "infl attack") -> Path:
    """Write losses.png, attack-<test>-<count>.png per attack and report.html into out_dir; returns the page.

    results: {count of perturbed training images: [AttackResult per test point]};
    X_test (m, d) the test images indexed by result.test_index.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = figure_png(losses_figure(results))
    (out / "losses.png").write_bytes(png)
    intro = ("Training images perturbed by signed steps of I_pert,loss (Koh &amp; Liang 2017, section 5.2), projected "
             "onto the allowed set after every step, the top layer retrained exactly after every step. A flip: the "
             "retrained model's prediction of the test image is no longer its label (for two classes: test loss above "
             "ln 2, the dashed line).")
    body = [_table(results), image_tag(png, "test loss against attack step", "plot")]
    for count, rows in results.items():
        body.append(f"<h2>{count} training image(s) perturbed</h2>")
        for r in rows:
            fig_png = figure_png(pairs_figure(r, X_test[r.test_index], image_shape))
            (out / f"attack-{r.test_index}-{count}.png").write_bytes(fig_png)
            body.append(f"<h3>Test image {r.test_index}: loss {r.losses[0]:.4g} &rarr; {r.losses[-1]:.4g} after "
                        f"{r.steps_taken} steps ({'flipped' if r.flipped else 'not flipped'})</h3>"
                        f"{image_tag(fig_png, f'original and perturbed training images for test {r.test_index}', 'plot')}")
    if summary:
        body.append(summary_section(summary))
    return write_page(out / REPORT_NAME, title, body, intro)
