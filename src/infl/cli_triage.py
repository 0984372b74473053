"""`infl triage`: which training labels to check first (Koh & Liang 2017, section 5.4, Figure 6)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import click
import numpy as np

from .cli import POSITIVE, REPORT_NAME, SEED, TRAIN_TOL, Clock, data_options, load_data, prepare_out, run_command, \
    label_width, train_model
from .data import Split
from .influence import SOLVERS, Influence
from .losses import cross_entropy
from .report import figure_png
from .triage import METHODS, TriageRun, check_claim, check_fraction, rank_for_checking, triage
from .triage_report import accuracy_rows, claim_text, found_rows, regime_text, triage_figure, write_ranking_report, \
    write_triage_report

FIGURE, FOUND_CSV, ACCURACY_CSV, RANKING_CSV = "triage.png", "found.csv", "accuracy.csv", "ranking.csv"
OUTPUTS = (REPORT_NAME, FIGURE, FOUND_CSV, ACCURACY_CSV, RANKING_CSV)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A CSV file with a header row."""
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(header)
        out.writerows(rows)


def found_table(runs: Sequence[TriageRun]) -> Iterator[list[object]]:
    """One row per (seed, method, fraction checked): fraction of flipped labels found."""
    for r in runs:
        yield from ([r.seed, m, f"{c:.2f}", f"{v:.6f}"] for m in METHODS for c, v in zip(r.checked, r.found[m]))


def accuracy_table(runs: Sequence[TriageRun]) -> Iterator[list[object]]:
    """One row per (seed, method, fraction fixed): test accuracy after retraining; plus clean and noisy."""
    for r in runs:
        yield from ([r.seed, m, f"{f:.2f}", f"{a:.6f}"] for m in METHODS for f, a in zip(r.fixed, r.accuracy[m]))
        yield from ([r.seed, "nothing fixed", "0.00", f"{r.accuracy_noisy:.6f}"],
                    [r.seed, "all labels clean", "1.00", f"{r.accuracy_clean:.6f}"])


def echo_table(title: str, rows: list[list[str]]) -> None:
    click.echo(f"\n{title}")
    click.echo("  " + "".join(f"{h:>34}" if i else f"{h:>8}" for i, h in enumerate(["checked", *METHODS])))
    for row in rows:
        click.echo("  " + "".join(f"{c:>34}" if i else f"{c:>8}" for i, c in enumerate(row)))


def run_flipped(split: Split, opts: dict, out: Path, clock: Clock) -> Path:
    """Flip, rank, fix and retrain for every seed; print and write the figures."""
    seeds = list(dict.fromkeys(opts["seed"] or (0, 1, 2)))
    clock.announce(f"{len(seeds)} seed(s): flip {100 * opts['flip']:.3g}% of labels, train, rank, fix and retrain")
    runs = triage(split, flip=opts["flip"], seeds=seeds, l2=opts["l2"], solver=opts["solver"], tol=TRAIN_TOL,
                  progress=clock.announce)
    claim = check_claim(runs)
    echo_table("fraction of flipped labels found: mean ± std (min-max)", found_rows(runs, [0.05, 0.1, 0.2, 0.3]))
    echo_table("test accuracy after fixing the checked points: mean ± std", accuracy_rows(runs))
    click.echo(f"\ntest accuracy with all labels clean {np.mean([r.accuracy_clean for r in runs]):.4f}, "
               f"with nothing fixed {np.mean([r.accuracy_noisy for r in runs]):.4f}")
    click.echo(claim_text(claim, len(runs)))
    click.echo(regime_text(runs))
    (out / FIGURE).write_bytes(figure_png(triage_figure(runs), dpi=150))
    write_csv(out / FOUND_CSV, ["seed", "method", "fraction_checked", "fraction_found"], found_table(runs))
    write_csv(out / ACCURACY_CSV, ["seed", "method", "fraction_checked", "test_accuracy"], accuracy_table(runs))
    summary = {"data": f"{split.name}: {len(split.y_train)} train, {len(split.y_test)} test, {split.classes} classes",
               "model": f"multinomial logistic regression, l2 = {opts['l2']:g}", "solver": opts["solver"],
               "flipped": f"{100 * opts['flip']:.3g}% of training labels ({len(runs[0].flipped)}), seeds {seeds}",
               "regime": regime_text(runs),
               "time": f"{clock.elapsed():.1f} s"}
    return write_triage_report(out / REPORT_NAME, runs, claim, split.X_train, split.as_given(split.y_train),
                               split.as_given(runs[0].noisy),
                               split.image_shape, summary, opts["top"], f"infl triage: {split.name}")


def run_as_is(split: Split, opts: dict, out: Path, clock: Clock) -> Path:
    """Rank the user's labels as they are: the points to check first, and ranking.csv."""
    with clock.stage(f"training logistic regression on {len(split.y_train)} points and ranking them"):
        model = train_model(split, opts["l2"])
        inf = Influence(model, cross_entropy, l2=opts["l2"], solver=opts["solver"]).fit((split.X_train, split.y_train))
        ranking = rank_for_checking(inf)
    order, given = ranking.orders["self-influence"], split.as_given(split.y_train)
    write_csv(out / RANKING_CSV, ["rank", "train_index", "label", "self_influence", "training_loss"],
              ([r, i, given[i], f"{ranking.self_influence[i]:.6g}", f"{ranking.loss[i]:.6g}"]
               for r, i in enumerate(order, 1)))
    click.echo(f"\nfirst {opts['top']} training points to check (|self-influence| largest first):")
    w = label_width(given[i] for i in order[:opts["top"]])
    click.echo(f"  {'rank':>4}  {'index':>6}  {'label':>{w}}  {'self-influence':>14}  {'loss':>9}")
    for r, i in enumerate(order[:opts["top"]], 1):
        click.echo(f"  {r:>4}  {i:>6}  {given[i]:>{w}}  {ranking.self_influence[i]:>+14.4g}  "
                   f"{ranking.loss[i]:>9.4g}")
    summary = {"data": f"{split.name}: {len(split.y_train)} train, labels as given",
               "model": f"multinomial logistic regression, l2 = {opts['l2']:g}", "solver": repr(inf.info),
               "time": f"{clock.elapsed():.1f} s"}
    return write_ranking_report(out / REPORT_NAME, ranking, split.X_train, given, split.image_shape, summary,
                                opts["top"])


@click.command(short_help="Find mislabelled training points: self-influence vs training loss vs random.")
@data_options
@click.option("--flip", type=float, default=0.1, show_default=True,
              help="Fraction of training labels flipped to another class, in (0, 1).")
@click.option("--as-is", "as_is", is_flag=True, help="Flip nothing: rank the labels as given (no ground truth).")
@click.option("--seed", type=SEED, multiple=True, help="Seed of the flips (repeatable) [default: 0 1 2].")
@click.option("--l2", type=POSITIVE, default=0.01, show_default=True,
              help="Weight decay of the logistic regression. Self-influence beats training loss only when l2 is "
                   "small enough for the model to fit (memorise) the flipped labels; see docs/uses.md.")
@click.option("--solver", type=click.Choice(list(SOLVERS)), default="exact", show_default=True,
              help="Inverse-Hessian-vector product method.")
@click.option("--top", type=click.IntRange(min=1), default=16, show_default=True,
              help="Points to check shown in the report.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("infl-triage"), show_default=True,
              help="Output folder for report.html, triage.png and the CSV files.")
@click.option("--force", is_flag=True, help="Write into a non-empty output folder.")
def triage_command(**opts: object) -> None:
    """Rank training points for label checking by |self-influence|, by training loss and at random.

    With built-in or given data, flips a fraction of the training labels (per seed), trains the
    paper's multinomial logistic regression on the noisy labels, and plots the fraction of flips found
    against the fraction of data checked, and the test accuracy after fixing the checked points and
    retraining. With --as-is, ranks the labels as given and lists the points to check first."""
    run_command(_triage, opts)


def _triage(opts: dict) -> None:
    clock = Clock()
    if opts["as_is"]:
        given = click.get_current_context().get_parameter_source("flip") == click.core.ParameterSource.COMMANDLINE
        if given or opts["seed"]:
            raise click.UsageError(f"{'--flip' if given else '--seed'} applies only when labels are flipped; "
                                   "--as-is ranks the labels as given: drop one of the two.")
    else:
        check_fraction(opts["flip"], "--flip")
    inputs = [Path(p) for p in (opts["train"], opts["test"], *opts["labels"]) if p is not None]
    out = prepare_out(opts["out"], opts["force"], inputs, OUTPUTS)
    with clock.stage("loading data"):
        split = load_data(opts["data"], opts["train"], opts["test"], opts["label_column"], opts["labels"])
    path = (run_as_is if opts["as_is"] else run_flipped)(split, opts, out, clock)
    click.echo(f"\nreport: {path}")
