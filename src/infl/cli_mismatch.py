"""`infl mismatch`: which training points drive the wrong test predictions (Koh & Liang 2017, section 5.3)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from .cli import POSITIVE, REPORT_NAME, Clock, run_command, data_options, load_data, predict, prepare_out, train_model
from .errors import InputError
from .influence import SOLVERS, Influence
from .losses import cross_entropy
from .mismatch import find_drivers, over_represented, rows_where
from .mismatch_report import write_mismatch_report


@click.command(short_help="Find the training points that drive the wrong test predictions.")
@data_options
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True, help="Drivers listed.")
@click.option("--threshold", type=POSITIVE, default=10.0, show_default=True,
              help="Flag drivers at or above this multiple of the mean |influence| (> 0).")
@click.option("--max-wrong", type=click.IntRange(min=1), default=50, show_default=True,
              help="Wrong test predictions analysed (the first ones).")
@click.option("--where", multiple=True, metavar="COLUMN=VALUE",
              help="Analyse only the wrong predictions on test rows meeting this condition (=, !=, <, <=, >, >=; "
                   "repeat to require several), e.g. --where 'age=17.5'; columns without names are 'feature 0', "
                   "'feature 1', ...")
@click.option("--l2", type=POSITIVE, default=0.01, show_default=True,
              help="Weight decay of the logistic regression.")
@click.option("--solver", type=click.Choice(list(SOLVERS)), default="exact", show_default=True,
              help="Inverse-Hessian-vector product method.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("infl-mismatch"), show_default=True,
              help="Output folder for report.html.")
@click.option("--force", is_flag=True, help="Write into a non-empty output folder.")
def mismatch_command(**opts: object) -> None:
    """Train the paper's logistic regression, take the test points it gets wrong (with --where, those on the
    rows named), and list the training points that drive them: weight = |I_up,loss| / mean |I_up,loss| over
    the training set, averaged over the wrong points; flags those above --threshold and, for non-image data,
    the feature values over-represented among the drivers."""
    run_command(_mismatch, opts)


def _mismatch(opts: dict) -> None:
    clock = Clock()
    inputs = [Path(p) for p in (opts["train"], opts["test"], *opts["labels"]) if p is not None]
    out = prepare_out(opts["out"], opts["force"], inputs, (REPORT_NAME,))
    split = load_data(opts["data"], opts["train"], opts["test"], opts["label_column"], opts["labels"])
    if opts["top"] > len(split.y_train):
        raise click.BadParameter(f"{opts['top']} is more than the {len(split.y_train)} training points.",
                                 param_hint="--top")
    where = " and ".join(opts["where"])
    try:
        chosen = rows_where(split.X_test, opts["where"], split.feature_names)
    except InputError as error:
        raise click.BadParameter(str(error), param_hint="--where") from error
    if not chosen.any():
        raise click.BadParameter(f"no test row meets {where}", param_hint="--where")
    with clock.stage("training and fitting influence"):
        model = train_model(split, opts["l2"])
        inf = Influence(model, cross_entropy, l2=opts["l2"], solver=opts["solver"])
        inf.fit((split.X_train, split.y_train))
    wrong = np.flatnonzero((predict(model, split.X_test) != split.y_test) & chosen)[: opts["max_wrong"]]
    if opts["where"] and not len(wrong):
        raise click.BadParameter(f"the model predicts all {int(chosen.sum())} test row(s) where {where} correctly; "
                                 "nothing to explain there", param_hint="--where")
    with clock.stage(f"scoring the training points for {len(wrong)} wrong test predictions"):
        drivers = find_drivers(inf, (split.X_test, split.y_test), wrong, opts["top"], opts["threshold"])
    values = [] if split.image_shape else over_represented(split.X_train, drivers.top, split.feature_names)
    click.echo(f"{len(wrong)} wrong test predictions; {len(drivers.outsized)} training point(s) at or above "
               f"{opts['threshold']:g}x the mean |influence|; the top {opts['top']} carry {drivers.share:.0%}")
    given = split.as_given(split.y_train)
    for rank, i in enumerate(drivers.top, 1):
        click.echo(f"  {rank:>4}  train #{i:<6} label {given[i]!s:<3} weight {drivers.weight[i]:.3g}x")
    for o in values:
        click.echo(f"  over-represented: {o.feature} = {o.value}: {o.share_top:.0%} of drivers vs "
                   f"{o.share_train:.1%} of training (lift {o.lift:.1f})")
    summary = {"data": split.name, "model": f"logistic regression, l2 = {opts['l2']:g}",
               "time": f"{clock.elapsed():.1f} s"}
    if opts["where"]:
        summary["wrong predictions analysed"] = f"on test rows where {where}"
    path = write_mismatch_report(out / REPORT_NAME, drivers, values, split.X_train, given,
                                 split.image_shape, summary, f"infl mismatch: {split.name}")
    click.echo(f"report: {path}")
