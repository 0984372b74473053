"""Figures, tables and the HTML page of `infl triage` (Koh & Liang's Figure 6)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .report import escaped, examples_grid, figure_section, summary_section, table_section, value_range, write_page
from .triage import METHODS, Claim, Ranking, TriageRun, spread

COLOURS = {"self-influence": "#b2182b", "training loss": "#2166ac", "random": "#777777"}
SIGN_NOTE = ("Self-influence I_up,loss(z_i, z_i) = -grad L(z_i)^T H^-1 grad L(z_i) is <= 0 for a positive definite "
             "Hessian; points are checked in order of its magnitude, largest first (the paper's section 5.4). "
             "Training loss: largest first. Checking a point restores its true label.")


def _band(ax, x: np.ndarray, runs: Sequence[TriageRun], key: str, method: str) -> None:
    mean, _, low, high = spread(runs, key, method)
    ax.plot(x, mean, color=COLOURS[method], lw=1.8, label=method, marker="o" if key == "accuracy" else None, ms=3)
    if len(runs) > 1:
        ax.fill_between(x, low, high, color=COLOURS[method], alpha=0.18, lw=0)


def triage_figure(runs: Sequence[TriageRun], x_max: float = 0.5) -> Figure:
    """Left: fraction of flipped labels found against fraction of training data checked. Right: test
    accuracy after fixing the checked points and retraining. Lines: mean over seeds; bands: min to max."""
    fig = Figure(figsize=(10, 4))
    found, acc = fig.subplots(1, 2)
    for method in METHODS:
        _band(found, runs[0].checked, runs, "found", method)
        _band(acc, runs[0].fixed, runs, "accuracy", method)
    clean, noisy = np.mean([r.accuracy_clean for r in runs]), np.mean([r.accuracy_noisy for r in runs])
    acc.axhline(clean, color="#1a9850", ls="--", lw=1, label=f"all labels clean ({clean:.3f})")
    acc.axhline(noisy, color="#444", ls=":", lw=1, label=f"nothing fixed ({noisy:.3f})")
    found.set_xlim(0, x_max)
    found.set_ylim(0, 1.02)
    found.set(xlabel="fraction of training data checked", ylabel="fraction of flipped labels found")
    acc.set(xlabel="fraction of training data checked", ylabel="test accuracy after fixing")
    for ax in (found, acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{len(runs)} seed(s): mean, band = min to max", fontsize=10)
    fig.tight_layout()
    return fig


def found_rows(runs: Sequence[TriageRun], fractions: Sequence[float]) -> list[list[str]]:
    """Per checked fraction, 'mean +- std (min-max)' of flips found for each method."""
    rows = []
    for f in fractions:
        col = int(np.argmin(np.abs(runs[0].checked - f)))
        cells = []
        for method in METHODS:
            mean, std, low, high = (v[col] for v in spread(runs, "found", method))
            cells.append(f"{mean:.3f} ± {std:.3f} ({low:.3f}-{high:.3f})")
        rows.append([f"{f:.0%}", *cells])
    return rows


def accuracy_rows(runs: Sequence[TriageRun]) -> list[list[str]]:
    """Per fixed fraction, 'mean +- std' test accuracy after fixing, for each method."""
    stats = {m: spread(runs, "accuracy", m) for m in METHODS}
    return [[f"{f:.0%}", *(f"{stats[m][0][i]:.4f} ± {stats[m][1][i]:.4f}" for m in METHODS)]
            for i, f in enumerate(runs[0].fixed)]


def claim_text(claim: Claim, seeds: int) -> str:
    """One sentence: does self-influence find more flips than training loss at every fraction up to 30%?"""
    span = f"{len(claim.fractions)} checked fractions from {claim.fractions[0]:.0%} to {claim.fractions[-1]:.0%}"
    more, tied = int((claim.margins > 0).sum()), int((claim.margins == 0).sum())
    verdict = "Holds" if claim.holds else "Does not hold"
    return (f"{verdict}: self-influence found more flips than training loss at {more} of the {span} "
            f"(mean over {seeds} seed(s)), as many at {tied}, fewer at {len(claim.fractions) - more - tied}; "
            f"largest lead {claim.margins.max():+.3f}, largest deficit {claim.margins.min():+.3f} "
            "(fraction of flips).")


def regime_text(runs: Sequence[TriageRun]) -> str:
    """Which regime the runs are in: how many flipped labels the noisy model fits, and what that means."""
    fitted = float(np.mean([r.flips_fitted for r in runs]))
    return (f"The model trained on the noisy labels fits {fitted:.0%} of the flipped ones (predicts their wrong "
            "label). Self-influence is the better signal when it fits many (weak l2: their loss drops, their "
            "self-influence stays high); training loss is when it fits few (strong l2).")


def suspects_section(ranking: Ranking, order: np.ndarray, X: np.ndarray, labels: np.ndarray,
                     shape: tuple[int, int] | None, top: int, truth: np.ndarray | None = None) -> str:
    """The first `top` points of `order` to check, captioned with label, self-influence and loss
    (and the true label, marked, when `truth` (n,) is known)."""
    picked = order[:top]
    captions = []
    for i in picked:
        flag = "" if truth is None else (f"<br><b>flipped (true {escaped(truth[i])})</b>" if truth[i] != labels[i] else
                                         "<br>label correct")
        captions.append(f"#{i} &middot; label {escaped(labels[i])}<br>self-inf {ranking.self_influence[i]:+.3g}"
                        f"<br>loss {ranking.loss[i]:.3g}{flag}")
    grid = examples_grid("harmful", picked, captions, X, shape, value_range(X))
    return f"<h2>First {len(picked)} points to check (by |self-influence|)</h2>{grid}"


def write_triage_report(path: str | Path, runs: Sequence[TriageRun], claim: Claim, X: np.ndarray,
                        y_clean: np.ndarray, y_noisy: np.ndarray, shape: tuple[int, int] | None,
                        summary: Mapping[str, str], top: int = 16, title: str = "infl triage") -> Path:
    """The triage page: Figure 6, the found and accuracy tables, the claim, the first points to check."""
    header = ["checked", *METHODS]
    sections = [
        figure_section("Flipped labels found, and test accuracy after fixing", triage_figure(runs),
                       "Mean over seeds; shaded band: min to max.", "fraction of flips found and accuracy"),
        f"<h2>Self-influence against training loss</h2><p>{html.escape(claim_text(claim, len(runs)))}</p>",
        table_section("Fraction of flipped labels found", header,
                      found_rows(runs, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]), "mean ± std (min-max) over seeds"),
        table_section("Test accuracy after fixing the checked points and retraining", header, accuracy_rows(runs),
                      "mean ± std over seeds"),
        suspects_section(runs[0].ranking, runs[0].ranking.orders["self-influence"], X, y_noisy, shape, top,
                         truth=y_clean),
        summary_section(summary),
    ]
    return write_page(path, title, sections, html.escape(SIGN_NOTE))


def write_ranking_report(path: str | Path, ranking: Ranking, X: np.ndarray, y: np.ndarray,
                         shape: tuple[int, int] | None, summary: Mapping[str, str], top: int = 16,
                         title: str = "infl triage (data as given)") -> Path:
    """The page for data taken as they are: the points to check first, and self-influence against loss."""
    fig = Figure(figsize=(4.8, 4))
    ax = fig.add_subplot()
    ax.scatter(ranking.loss, np.abs(ranking.self_influence), s=6, color="#555")
    first = ranking.orders["self-influence"][:top]
    ax.scatter(ranking.loss[first], np.abs(ranking.self_influence[first]), s=14, color=COLOURS["self-influence"],
               label=f"first {len(first)} to check")
    ax.set(xlabel="training loss", ylabel="|self-influence|", xscale="symlog", yscale="symlog")
    ax.legend(fontsize=8)
    fig.tight_layout()
    sections = [suspects_section(ranking, ranking.orders["self-influence"], X, y, shape, top),
                figure_section("|Self-influence| against training loss", fig, "Every training point."),
                summary_section(summary)]
    return write_page(path, title, sections, html.escape(SIGN_NOTE))
