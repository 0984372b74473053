"""The HTML page of `infl mismatch`: the drivers of wrong predictions and what they share."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .mismatch import Drivers, Overrepresented
from .report import escaped, examples_grid, figure_section, summary_section, table_section, value_range, write_page

INTRO = ("For each test point the model gets wrong, a training point's weight is |I_up,loss(z_i, z_test)| divided "
         "by the mean |I_up,loss| over the training set (1 = an average point); weights are averaged over the "
         "wrong test points. Points at or above the threshold carry an outsized share.")


def weight_figure(drivers: Drivers) -> Figure:
    """Every training point's weight, sorted, on a log scale, with the threshold."""
    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    ax.plot(np.sort(drivers.weight)[::-1], color="#2166ac", lw=1.5)
    ax.axhline(drivers.threshold, color="#b2182b", ls="--", lw=1, label=f"threshold {drivers.threshold:g}")
    ax.set(yscale="log", xlabel="training points, by weight", ylabel="weight (x mean |influence|)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_mismatch_report(path: str | Path, drivers: Drivers, values: Sequence[Overrepresented], X: np.ndarray,
                          y: np.ndarray, shape: tuple[int, int] | None, summary: Mapping[str, str],
                          title: str = "infl mismatch") -> Path:
    """Drivers as pictures (images) or bar charts, the weight curve, and the over-represented values."""
    captions = [f"#{i} &middot; label {escaped(y[i])}<br><b>{drivers.weight[i]:.3g}x</b>" for i in drivers.top]
    sections = [f"<h2>The {len(drivers.top)} training points driving the {len(drivers.wrong)} wrong predictions"
                f"</h2>{examples_grid('harmful', drivers.top, captions, X, shape, value_range(X))}",
                figure_section("Weights of all training points", weight_figure(drivers),
                               f"{len(drivers.outsized)} point(s) at or above {drivers.threshold:g}x; the top "
                               f"{len(drivers.top)} carry {drivers.share:.0%} of the |influence|.")]
    if values:
        sections.append(table_section(
            "Feature values over-represented among the drivers", ["feature", "value", "drivers", "share", "in training",
                                                                  "lift"],
            [[o.feature, o.value, o.count, f"{o.share_top:.0%}", f"{o.share_train:.1%}", f"{o.lift:.1f}"]
             for o in values]))
    sections.append(summary_section(summary))
    return write_page(path, title, sections, INTRO)
