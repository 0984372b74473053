"""The `infl` command line: `infl explain` reproduces Koh & Liang's MNIST explanation and leave-one-out check.

Results go to stdout, progress (each stage with its elapsed time, a tqdm bar for
leave-one-out) to stderr. Every user error ends as a one-line message and a
non-zero exit code. Scores are I_up,loss (MATH.md): positive = harmful.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import click
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data import (BUILTINS, DataError, Split, csv_features, file_kind, integer_labels, load_builtin, load_file,
                   stored_image_shape)
from .errors import InflError, warn
from .influence import SOLVERS, Influence
from .losses import cross_entropy
from .report import RUN_WARNINGS, ExplainedPoint, figure_loo, top_k, write_explain_report
from .solvers.base import SolveInfo
from .train import fit_logistic
from .validate import LeaveOneOut, leave_one_out, retrain_all

REPORT_NAME, LOO_FIGURE = "report.html", "loo.png"
TRAIN_TOL = 1e-9  # max |grad R| at which training stops


class FiniteFloat(click.ParamType):
    """A finite number >= low (> low when open): NaN and inf are refused with the option's name."""

    name = "float"

    def __init__(self, low: float = 0.0, open_: bool = False) -> None:
        self.low, self.open_ = low, open_

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number < self.low or (self.open_ and number == self.low):
            self.fail(f"must be a finite number {'>' if self.open_ else '>='} {self.low:g}, got {value}", param, ctx)
        return number


NONNEGATIVE, POSITIVE = FiniteFloat(0.0), FiniteFloat(0.0, open_=True)
SEED = click.IntRange(0, 2**64 - 1)  # numpy's generators refuse negative seeds, torch's those above 64 bits


class Clock:
    """Elapsed time since the command started; announces stages on stderr and records their durations."""

    def __init__(self) -> None:
        self.start, self.timings = time.perf_counter(), {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def announce(self, name: str) -> None:
        """`name ...` on stderr with the elapsed time: a stage begins."""
        click.echo(f"[{self.elapsed():7.1f}s] {name} ...", err=True)

    def done(self) -> None:
        """`done` on stderr with the elapsed time: the command's last line."""
        click.echo(f"[{self.elapsed():7.1f}s] done", err=True)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.announce(name)
        began = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - began


# --- steps ----------------------------------------------------------------------------


def prepare_out(out: Path, force: bool, inputs: Sequence[Path], names: Sequence[str] = (REPORT_NAME, LOO_FIGURE)) -> Path:
    """Create the output folder; refuse a non-empty one without --force and never overwrite an input file.

    `names`: the files the command writes there (glob patterns allowed). With --force, those already there are
    set aside (into out/.infl-replaced) so none is left from an earlier run (e.g. a figure this run does not
    make): deleted once the command succeeds, put back if it fails (run_command). Other files are kept.
    """
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"--out {out} is a file, not a folder; choose a folder name.")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise click.ClickException(f"output folder {out} is not empty; choose another --out, or pass --force to "
                                   f"write into it anyway (only {', '.join(names)} are replaced).")
    clash = [str(p) for p in inputs if p.resolve() in {(out / name).resolve() for name in names}
             or (p.resolve().parent == out.resolve() and any(p.match(name) for name in names))]
    if clash:
        raise click.ClickException(f"the output would overwrite the input file {clash[0]}; choose another --out.")
    if (out / SET_ASIDE).is_dir():  # left by a run that was killed: its files are the last complete results
        _put_back(out, names)
    ours = [path for name in names for path in (out.glob(name) if out.is_dir() else ())]
    _set_aside(out, [path for path in ours if path.is_file()], names)
    missing = [folder for folder in (out, *out.parents) if not folder.exists()]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    _created.extend(missing)
    return out


SET_ASIDE = ".infl-replaced"  # where --force keeps the files it replaces until the command succeeds
_created: list[Path] = []  # output folders this command made, deepest first
_replaced: list[tuple[Path, Sequence[str]]] = []  # (output folder, the command's file names) with files set aside


def _set_aside(out: Path, paths: Sequence[Path], names: Sequence[str]) -> None:
    if paths:
        (out / SET_ASIDE).mkdir(exist_ok=True)
        for path in paths:
            path.replace(out / SET_ASIDE / path.name)
        _replaced.append((out, names))


def _put_back(out: Path, names: Sequence[str]) -> None:
    """Replace the command's files in out (written by a failed run) by those set aside."""
    for path in [path for name in names for path in out.glob(name) if path.is_file()]:
        path.unlink()
    for path in (out / SET_ASIDE).iterdir():
        path.replace(out / path.name)
    (out / SET_ASIDE).rmdir()


def _finish_outputs(succeeded: bool) -> None:
    """After a command: drop the files it replaced (success) or restore them, and remove the output folders it
    made that are still empty (failure)."""
    for out, names in _replaced:
        with contextlib.suppress(OSError):
            if succeeded:
                shutil.rmtree(out / SET_ASIDE)
            else:
                _put_back(out, names)
    _replaced.clear()
    if not succeeded:
        _remove_empty_created()


def _remove_empty_created() -> None:
    """Remove the output folders this command made that are still empty (it failed before writing)."""
    for folder in _created:
        with contextlib.suppress(OSError):
            folder.rmdir()
    _created.clear()


def _load_file(path: Path, label_column: str | None, labels: Path | None, **extra: object
               ) -> tuple[np.ndarray, np.ndarray]:
    """X (n, d), y (n,) from `path`, with --label-column if it is a CSV file and --labels (`labels`) if IDX
    images; `extra` passes load_file options (min_classes, and features for CSV)."""
    kind = file_kind(path)
    options = {"label_column": label_column} if label_column is not None and kind == "csv" else {}
    options.update({"labels_path": labels} if labels is not None else {})
    options.update({"text_labels": True} if kind in ("csv", "npz") else {})  # class names are mapped to indices
    options.update(extra)
    try:
        return load_file(path, **options)
    except DataError as error:  # say the option as the command line spells it
        message = str(error).replace("Pass label_column=...", "Pass --label-column NAME if they are under another "
                                     "name.").replace(" (or class names, with text_labels=True)", " or class names")
        raise DataError(message.replace("Pass x_key=... and y_key=...", "Save the arrays as X and y "
                                        "(np.savez(path, X=X, y=y)).")) from error


def load_data(data: str | None, train: Path | None, test: Path | None, label_column: str | None,
              labels: Sequence[Path]) -> Split:
    """The built-in split `data`, or the user's --train and --test files (images when a file stores them as
    such: IDX, or a .npz X of shape (n, h, w); otherwise tabular)."""
    if train is None and test is None:
        given = [name for name, value in (("--label-column", label_column is not None), ("--labels", labels)) if value]
        if given:
            raise click.UsageError(f"{' and '.join(given)} describe{'s' if len(given) == 1 else ''} the files of "
                                   "--train and --test; built-in data has its own labels. Pass --train and --test.")
        return load_builtin(data or "mnist")
    if data is not None:
        raise click.UsageError(f"--data {data} and --train/--test are alternatives: pass one or the other.")
    if train is None or test is None:
        raise click.UsageError("--train and --test go together: pass both files, or neither for built-in data.")
    if label_column is not None and "csv" not in (file_kind(train), file_kind(test)):
        raise click.UsageError(f"--label-column applies to CSV files, but neither {train} nor {test} is one.")
    images = [file_kind(path) == "idx" for path in (train, test)]
    if len(labels) != sum(images):
        raise click.UsageError(f"--labels gives the labels file of each IDX image file, in the order --train, "
                               f"--test: {sum(images)} here, got {len(labels)}.")
    given = iter(labels)
    pair = [next(given) if image else None for image in images]
    X_train, y_train = _load_file(train, label_column, pair[0])
    both_csv = file_kind(train) == "csv" and file_kind(test) == "csv"  # then columns are matched by name
    features = csv_features(train, label_column or "label") if both_csv else None
    X_test, y_test = _load_file(test, label_column, pair[1], min_classes=1,
                                **({"features": features} if features is not None else {}))
    d = X_train.shape[1]
    if X_test.shape[1] != d:
        raise DataError(f"{test}: test points have {X_test.shape[1]} features but the training points {d}; "
                        "both files must describe the same features.")
    shapes = [stored_image_shape(path) for path in (train, test)]  # images as stored; (n, d) arrays are tabular
    if None not in shapes and shapes[0] != shapes[1]:
        raise DataError(f"{test}: its images are {shapes[1][0]} x {shapes[1][1]} but the training images "
                        f"{shapes[0][0]} x {shapes[0][1]}; both files must hold images of one shape.")
    shape = shapes[0] or shapes[1]
    y_train, y_test = _numbers_or_names(y_train, y_test, train, test)
    values = np.unique(y_train)
    y_train, y_test = _class_indices(values, y_train, y_test, test)
    renumbered = not np.array_equal(values, np.arange(len(values)))
    return Split(X_train, y_train, X_test, y_test, shape, len(values), train.name,
                 tuple(features) if features is not None else None, tuple(values.tolist()) if renumbered else None)


def _numbers_or_names(y_train: np.ndarray, y_test: np.ndarray, train: Path, test: Path
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Both files' labels (as read: CSV text, .npz names or integers, IDX integers) as int64 when every one is a
    number (then integers are required; "03" and "3" are one class), else as class names, str (the text as
    written)."""
    if not (y_train.dtype.kind in "iu" and y_test.dtype.kind in "iu"):  # stored integers stay exact as they are
        y_train, y_test = y_train.astype(str), y_test.astype(str)
        both = integer_labels(np.concatenate([y_train, y_test]), f"{train} / {test}")
        if both is None:
            return y_train, y_test  # class names
        y_train, y_test = both[:len(y_train)], both[len(y_train):]
    if len(np.unique(y_train)) < 2:
        raise DataError(f"{train}: labels need at least 2 classes, got only {np.unique(y_train).tolist()} (as "
                        "numbers); a classifier needs examples of two or more classes.")
    return y_train, y_test


def _class_indices(values: np.ndarray, y_train: np.ndarray, y_test: np.ndarray, test: Path
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Labels as class indices 0..K-1 over the training file's classes `values` (sorted; a note on stderr when
    they are renumbered, e.g. 3 and 7 -> 0 and 1); test labels must be among them."""
    unknown = np.setdiff1d(np.unique(y_test), values)
    if unknown.size:
        raise DataError(f"{test}: test labels {unknown[:5].tolist()} do not occur in the training file (classes "
                        f"{values[:10].tolist()}); a model trained on it can never predict them.")
    if not np.array_equal(values, np.arange(len(values))):
        shown = ", ".join(f"{v} -> {i}" for i, v in enumerate(values[:10])) + (" ..." if len(values) > 10 else "")
        click.echo(f"note: labels renumbered as classes 0..{len(values) - 1} for the model ({shown}); output "
                   "shows the file's labels", err=True)
    return np.searchsorted(values, y_train), np.searchsorted(values, y_test)


def train_model(split: Split, l2: float) -> nn.Linear:
    """The paper's model: multinomial logistic regression nn.Linear(d, classes) in float64, trained to
    argmin mean cross-entropy + (l2/2)||theta||^2 by L-BFGS from zero; refuses l2 = 0 on separable data (no
    minimum exists)."""
    model = fit_logistic(split.X_train, split.y_train, split.classes, l2, tol=TRAIN_TOL)
    if not all(torch.isfinite(param).all() for param in model.parameters()):
        raise click.ClickException(f"training with --l2 {l2:g} gave NaN or infinite weights (an overflow): use "
                                   "features of moderate size (e.g. scaled to [0, 1]) and an --l2 of 1e-4 to 1")
    if l2 == 0 and (predict(model, split.X_train) == split.y_train).all():
        raise click.BadParameter("0 on training data the model separates (train accuracy 1): without weight decay "
                                 "the loss has no minimum, the weights grow until training stops, and influence at "
                                 "that point means nothing. Pass --l2 > 0 (e.g. 0.01).", param_hint="--l2")
    return model


def predict(model: nn.Module, X: np.ndarray) -> np.ndarray:
    """Predicted classes (n,) for inputs X (n, d)."""
    with torch.no_grad():
        return model(torch.as_tensor(X)).argmax(1).numpy()


def check_test_indices(split: Split, requested: Sequence[int]) -> list[int]:
    """The requested test indices without repeats, or a one-line error naming the valid range."""
    m = len(split.y_test)
    bad = [i for i in requested if not 0 <= i < m]
    if bad:
        raise click.ClickException(f"--test-index {bad[0]} is out of range: the test set has {m} points "
                                   f"(indices 0 to {m - 1}).")
    return list(dict.fromkeys(requested))


def pick_tests(split: Split, predicted: np.ndarray, count: int = 3) -> list[int]:
    """The first `count` test points the model gets wrong (the first `count` if it gets none wrong)."""
    wrong = np.flatnonzero(predicted != split.y_test)
    return (wrong if len(wrong) else np.arange(len(split.y_test)))[:count].tolist()


def explain_points(inf: Influence, split: Split, predicted: np.ndarray, tests: list[int]) -> list[ExplainedPoint]:
    """Scores I_up,loss (n_train,) and test loss for each test index."""
    X, y = inf.test_tensors((split.X_test[tests], split.y_test[tests]))
    scores = inf.scores((X, y)).cpu().numpy()
    obj = inf.objective_
    losses = obj.losses(obj.theta, X, y).detach().cpu().numpy()
    label, guess = split.as_given(split.y_test[tests]).tolist(), split.as_given(predicted[tests]).tolist()
    return [ExplainedPoint(t, split.X_test[t], label[k], guess[k], float(loss), row)
            for k, (t, loss, row) in enumerate(zip(tests, losses, scores))]


def label_width(labels: Iterable[object]) -> int:
    """The width of a table's label column: 5 ("label"), or the longest of `labels` (class names may be long)."""
    return max([5] + [len(str(label)) for label in labels])


def print_point(point: ExplainedPoint, top: int, y_train: np.ndarray) -> None:
    """The top-k harmful and helpful training points of one test point, as two tables on stdout."""
    harmful, helpful = top_k(point.scores, top)
    click.echo(f"\ntest point {point.index}: true label {point.label}, predicted {point.predicted}, "
               f"test loss {point.loss:.4g}")
    for title, rows in (("most harmful (score > 0: upweighting raises the test loss)", harmful),
                        ("most helpful (score < 0: upweighting lowers the test loss)", helpful)):
        w = label_width(y_train[i] for i in rows)
        click.echo(f"  {title}\n    {'rank':>4}  {'train index':>11}  {'label':>{w}}  {'score':>11}")
        for rank, i in enumerate(rows, 1):
            click.echo(f"    {rank:>4}  {i:>11}  {y_train[i]:>{w}}  {point.scores[i]:>+11.4g}")
        if len(rows) < top:
            click.echo(f"    (only {len(rows)} training points have a score of this sign)")


def loo_indices(scores: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k training indices: the ceil(k/2) largest |I_up,loss| (scores (n,)), then random others drawn with `seed`."""
    by_size = np.argsort(-np.abs(scores), kind="stable")
    top, rest = by_size[: (k + 1) // 2], by_size[(k + 1) // 2:]
    drawn = np.random.default_rng(seed).choice(rest, size=k - len(top), replace=False)
    return np.concatenate([top, np.sort(drawn)])


def run_loo(inf: Influence, split: Split, test: int, k: int, seed: int) -> LeaveOneOut:
    """Leave-one-out retraining on k training points for one test point, with a tqdm bar on stderr."""
    X, y = torch.as_tensor(split.X_test[[test]]), torch.as_tensor(split.y_test[[test]])
    indices = loo_indices(inf.scores((X, y))[0].cpu().numpy(), k, seed).tolist()
    with tqdm(total=k, desc="leave-one-out", unit="retrain", file=sys.stderr) as bar:
        return leave_one_out(inf, (X, y), indices, retrain=lambda inf, idx: retrain_all(inf, idx, done=bar.update))


def summary_table(split: Split, inf: Influence, info: SolveInfo, opts: dict, accuracy: tuple[float, float],
                  loo: LeaveOneOut | None, clock: Clock) -> dict[str, str]:
    """The run summary shown in the report; info: the solve of the explained points."""
    n, d = split.X_train.shape
    table = {
        "data": f"{split.name}: {n} train, {len(split.y_test)} test, {d} features, {split.classes} classes",
        "model": f"nn.Linear({d}, {split.classes}) float64, multinomial logistic regression, p = {inf.objective_.p}",
        "l2, damping": f"{inf.l2:g}, {inf.damping:g}",
        "train / test accuracy": f"{accuracy[0]:.4f} / {accuracy[1]:.4f}",
        "||grad R(theta_hat)||": f"{inf.grad_norm_:.3g}",
        "solver": f"{opts['solver']}: {info!r}",
    }
    if loo is not None:
        table["leave-one-out"] = (f"{len(loo.indices)} points, Pearson R = {loo.pearson[0]:.4f}, "
                                  f"Spearman = {loo.spearman[0]:.4f}")
    table.update({f"time: {name}": f"{secs:.1f} s" for name, secs in clock.timings.items()})
    table["time: total"] = f"{clock.elapsed():.1f} s"
    return table


# --- commands -------------------------------------------------------------------------


def data_options(command: Callable) -> Callable:
    """The data options every command shares: --data, or --train and --test (with --label-column, --labels)."""
    options = [
        click.option("--data", type=click.Choice(BUILTINS), help="Built-in data set [default: mnist, unless --train]."),
        click.option("--train", "train", type=click.Path(path_type=Path), help="Training file (.npz, .csv or IDX)."),
        click.option("--test", "test", type=click.Path(path_type=Path), help="Test file, same format as --train."),
        click.option("--label-column", help="CSV column holding the labels [default: label]."),
        click.option("--labels", type=click.Path(path_type=Path), multiple=True,
                     help="The labels file of an IDX image file; with both --train and --test as IDX, give it "
                          "twice, in that order."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


class LazyGroup(click.Group):
    """A command group whose commands in `lazy` ({name: "module:attribute"}) are imported when first used,
    so that modules defining commands can import this module's helpers."""

    def __init__(self, *args: object, lazy: dict[str, str], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, attribute = self.lazy[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy={"triage": "infl.cli_triage:triage_command",
                                 "mismatch": "infl.cli_mismatch:mismatch_command",
                                 "behaviour": "infl.cli_uses:behaviour", "attack": "infl.cli_uses:attack",
                                 "index": "infl.cli_index:index", "query": "infl.cli_index:query"})
@click.version_option(package_name="infl")
def main() -> None:
    """infl: which training examples made my model predict this? (Koh & Liang 2017)"""


@main.command(short_help="Explain test predictions by their most harmful and helpful training points.")
@data_options
@click.option("--test-index", type=int, multiple=True, help="Test point to explain (repeatable) "
              "[default: the first 3 the model gets wrong].")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="Harmful and helpful training points shown per test point.")
@click.option("--loo", type=click.IntRange(min=0), default=30, show_default=True,
              help="Training points removed and retrained on for the first test point: 0 skips, else at least 3.")
@click.option("--l2", type=NONNEGATIVE, default=0.01, show_default=True, help="Weight decay of training.")
@click.option("--damping", type=NONNEGATIVE, default=0.0, show_default=True, help="Added to the Hessian only (not to training).")
@click.option("--solver", type=click.Choice(list(SOLVERS)), default="exact", show_default=True,
              help="Inverse-Hessian-vector product method.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random leave-one-out points.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("infl-out"), show_default=True,
              help="Output folder for report.html and loo.png.")
@click.option("--force", is_flag=True, help="Write into a non-empty output folder.")
def explain(**opts: object) -> None:
    """Explain test predictions by their most harmful and helpful training points.

    Trains the paper's multinomial logistic regression (float64, to the optimum of mean
    cross-entropy + l2/2 ||theta||^2), scores every training point by I_up,loss (positive =
    harmful), checks the scores against leave-one-out retraining, and writes an HTML report."""
    run_command(_explain, opts)


SPELLINGS = (  # the library's advice as every command spells it: (regular expression, replacement), in order;
    # the commands train a convex logistic regression and take each solver's defaults
    (r"(?:EK-?FAC|KFAC|Arnoldi)\(refine=\d+\) \(block CG steps on the true curvature; more where it still "
     r"warns\) or solver='cg' solves it",
     "--solver exact or --solver cg solves it"),
    (r"use rank <= \d+, or solver='exact' for the whole spectrum, which is cheap at this size",
     "use --solver exact (the whole spectrum, cheap at this size)"),
    (r"(?:Raise depth, repeats or batch_size|Raise refine \(e\.g\. refine=\d+\)|Raise tol, lower rank), or (?:use "
     r"solver='cg'|pass refine > 0 \(CG steps correct it\))", "Use --solver cg or --solver exact"),
    (r"Raise (?:max_depth or damping|scale \(e\.g\. scale=[^)]*\), raise batch_size), or (?:use solver='cg'|add "
     r"damping)", "Use --solver cg or --solver exact"),
    (r"Add damping, raise probes, or use solver='cg'", "Use --solver cg or --solver exact"),
    (r"raise max_iter or the preconditioner rank, or add damping", "use --solver exact"),
    (r"solver='(\w+)'", r"--solver \1"),
    (r"pass damping > (\S+) \(e\.g\. damping=([^)]+)\), or use curvature='gauss-newton'",
     r"pass --damping \2 (any value above \1), or a larger --l2. The command's logistic regression is convex, so a "
     "negative eigenvalue comes from rounding: standardise features of very different or very large sizes"),
    (r"([Aa])dd damping(?: > ([^\s,]+))?,? or use curvature='gauss-newton'",
     lambda m: f"{m.group(1)}dd --damping{' above ' + m.group(2) if m.group(2) else ''}, or a larger --l2 (the "
               "command's logistic regression is convex, so this comes from rounding: standardise the features)"),
    (r"pass a damping above the current (\S+) to the Influence, or use curvature='gauss-newton'",
     r"pass a --damping above \1, or a larger --l2 (the command's logistic regression is convex, so this comes "
     "from rounding: standardise the features)"),
    (r"pass damping > (\S+) to the Influence, or use curvature='gauss-newton'",
     r"pass --damping above \1, or a larger --l2 (the command's logistic regression is convex, so this comes "
     "from rounding: standardise the features)"),
    (r", or raise max_params if the memory is there", ""),
    (r"Add damping \(or a larger l2\)", "Add --damping (or a larger --l2)"),
    (r"the optimum is not tight: raise max_iter", "the optimum is not tight: standardise features of very different "
     "sizes (they slow L-BFGS), or raise --l2"),
    (r", or raise max_iter \(it sets that budget\)", ", or raise --l2"),
    (r"train to convergence, or have retrain return the same retraining on all points under the key None, the "
     r"baseline \(.*README\)", "the command's training stopped short of the minimum: standardise features of very "
     "different sizes (they slow L-BFGS), or raise --l2"),
)


def spell(message: str, spellings: Sequence[tuple[str, str]] = ()) -> str:
    """A library message as the command line spells its advice: the command's own `spellings` (plain (python,
    option) pairs, first match first), then SPELLINGS."""
    for python, option in spellings:
        message = message.replace(python, option)
    for pattern, option in SPELLINGS:
        message = re.sub(pattern, option, message)
    return message


def run_command(body, opts: dict, *, spellings: Sequence[tuple[str, str]] = (),
                failed_io: str = "write the output") -> None:
    """body(opts), with infl's errors and failed file access (`cannot {failed_io}: ...`) turned into one-line
    click errors, and warnings into `warning: ...` lines on stderr; the advice in both is spelled as the command
    line takes it (`spell`). If it fails (or is interrupted), the output folders it made are removed again when
    still empty, and the files --force replaced are put back."""
    _created.clear()  # folders made by an earlier command in this process are not this one's
    _replaced.clear()
    RUN_WARNINGS.clear()  # recorded for the reports this command writes

    def show(message: Warning | str, category: type, filename: str, lineno: int, file=None, line=None) -> None:
        RUN_WARNINGS.append(spell(str(message), spellings))
        tqdm.write(f"warning: {RUN_WARNINGS[-1]}", file=sys.stderr)  # on its own line, under a bar

    try:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = show
                body(opts)
        except InflError as error:
            raise click.ClickException(spell(str(error), spellings)) from error
        except BrokenPipeError:  # the reader of our output left (e.g. `| head`): stop quietly, as Python advises
            with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor needs nothing
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except OSError as error:
            raise click.ClickException(f"cannot {failed_io}: {error}") from error
    except BaseException:  # errors, Ctrl-C, and the quiet exit of a closed pipe
        _finish_outputs(succeeded=False)
        raise
    finally:
        RUN_WARNINGS.clear()  # this command's only: not in pages written later in the same process
    _finish_outputs(succeeded=True)


def check_l2_damping(opts: dict) -> None:
    """Refuse --l2 0 with --damping 0: the softmax model's Hessian is then singular."""
    if opts["l2"] == 0 and opts["damping"] == 0:
        raise click.BadParameter("0 with --damping 0 leaves the Hessian singular (softmax outputs do not change when "
                                 "the same vector is added to every class's weights); pass --damping 0.001, or --l2 > 0.",
                                 param_hint="--l2")


def _explain(opts: dict) -> None:
    clock = Clock()
    if opts["loo"] in (1, 2):
        raise click.BadParameter("use 0 to skip, or at least 3 points for a correlation.", param_hint="--loo")
    check_l2_damping(opts)
    inputs = [Path(p) for p in (opts["train"], opts["test"], *opts["labels"]) if p is not None]
    out = prepare_out(opts["out"], opts["force"], inputs)
    with clock.stage("loading data"):
        split = load_data(opts["data"], opts["train"], opts["test"], opts["label_column"], opts["labels"])
    n, requested = len(split.y_train), check_test_indices(split, opts["test_index"])
    for flag in ("top", "loo"):
        if opts[flag] > n:
            raise click.BadParameter(f"{opts[flag]} is more than the {n} training points.", param_hint=f"--{flag}")
    with clock.stage(f"training logistic regression on {n} points (l2={opts['l2']:g})"):
        model = train_model(split, opts["l2"])
    predicted = predict(model, split.X_test)
    accuracy = float(np.mean(predict(model, split.X_train) == split.y_train)), float(np.mean(predicted == split.y_test))
    click.echo(f"{split.name}: train accuracy {accuracy[0]:.4f}, test accuracy {accuracy[1]:.4f}")
    tests = requested or pick_tests(split, predicted)
    if not requested and (predicted == split.y_test).all():
        warn(f"the model gets no test point wrong, so the first {len(tests)} test points are explained instead; "
             "pass --test-index to choose")
    with clock.stage(f"fitting influence ({opts['solver']} solver)"):
        inf = Influence(model, cross_entropy, l2=opts["l2"], damping=opts["damping"], solver=opts["solver"])
        inf.fit((torch.as_tensor(split.X_train), torch.as_tensor(split.y_train)))
    with clock.stage(f"scoring {n} training points for test points {tests}"):
        points = explain_points(inf, split, predicted, tests)
    info = inf.info  # of the explained points' solve (leave-one-out solves again)
    click.echo(f"solver: {info!r}")
    for point in points:
        print_point(point, opts["top"], split.as_given(split.y_train))
    loo = None
    if opts["loo"]:
        with clock.stage(f"leave-one-out: retraining without {opts['loo']} points (test point {tests[0]})"):
            loo = run_loo(inf, split, tests[0], opts["loo"], opts["seed"])
        click.echo(f"\nleave-one-out on test point {tests[0]} ({len(loo.indices)} retrains): "
                   f"Pearson R = {loo.pearson[0]:.4f}, Spearman = {loo.spearman[0]:.4f}")
        figure_loo(loo.predicted[0], loo.actual[0], out / LOO_FIGURE)
    with clock.stage("writing the report"):
        summary = summary_table(split, inf, info, opts, accuracy, loo, clock)
        path = write_explain_report(out / REPORT_NAME, points=points, X_train=split.X_train,
                                    y_train=split.as_given(split.y_train),
                                    image_shape=split.image_shape, top=opts["top"], loo=loo,
                                    loo_test_index=tests[0], summary=summary, title=f"infl explain: {split.name}")
    click.echo(f"\nreport: {path}")
    clock.done()


if __name__ == "__main__":  # python -m infl.cli, e.g. under torchrun
    main()
