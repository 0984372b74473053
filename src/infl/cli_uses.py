"""Commands for the paper's uses of influence: `infl attack` (section 5.2) and `infl behaviour` (section 5.1).

Both run on a built-in digit data set: two digit classes form the binary task, a
small CNN trained once on the other classes is the frozen feature extractor
(cached), and a Linear top layer is trained on the binary task. Results go to
stdout, progress to stderr, files only into --out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from .attack import EIGHT_BIT, Budget, HeadAttack, flip_fractions
from .attack_report import flip_fraction, write_attack_report
from .behaviour import CNN, SVM, compare_behaviour, write_behaviour_report
from .cli import POSITIVE, REPORT_NAME, SEED, Clock, prepare_out, run_command
from .data import BUILTINS, load_builtin
from .frozen import EPOCHS, binary_task, default_cache, load_extractor, predict


def data_options(command):
    """--data, --digits, --seed, --epochs, --cache, --l2, --out, --force: shared by the two commands."""
    options = [
        click.option("--data", type=click.Choice(BUILTINS), default="mnist", show_default=True,
                     help="Built-in digit images."),
        click.option("--digits", type=(int, int), default=(4, 9), show_default=True,
                     help="The two digit classes of the binary task (the others train the feature extractor)."),
        click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the extractor's training."),
        click.option("--epochs", type=click.IntRange(min=1), default=EPOCHS, show_default=True,
                     help="Training passes of the feature extractor."),
        click.option("--cache", type=click.Path(path_type=Path), default=None,
                     help=f"Folder caching the trained extractor [default: {default_cache()}]."),
        click.option("--l2", type=POSITIVE, default=0.01, show_default=True,
                     help="Weight decay of the top layer."),
        click.option("--force", is_flag=True, help="Write into a non-empty output folder."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def check_test_index(requested: tuple[int, ...], m: int) -> list[int]:
    bad = [i for i in requested if not 0 <= i < m]
    if bad:
        raise click.BadParameter(f"{bad[0]} is out of range: the binary task has {m} test points "
                                 f"(indices 0 to {m - 1}).", param_hint="--test-index")
    return list(dict.fromkeys(requested))


@click.command(short_help="Perturb training images to flip test predictions (paper section 5.2).")
@data_options
@click.option("--test-index", type=int, multiple=True,
              help="Test point of the binary task to attack (repeatable) [default: --tests random correct ones].")
@click.option("--tests", type=click.IntRange(min=1), default=5, show_default=True,
              help="Number of correctly classified test points attacked, drawn with --seed.")
@click.option("--perturb", type=click.IntRange(min=1), multiple=True,
              help="Number of training images perturbed per attack (repeatable) [default: 1, 2 and 10].")
@click.option("--radius", type=POSITIVE, default=None,
              help="L-infinity budget per pixel, pixels in [0, 1] [default: 8-bit image unchanged: each pixel "
                   "kept inside the interval that rounds to its grey level; --radius 0.00196 (0.5/255) is a plain "
                   "ball instead, whose edges round to the next level].")
@click.option("--step", type=POSITIVE, default=None, help="Signed step size [default: radius / 4].")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="Attack iterations (each retrains).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("infl-attack"), show_default=True,
              help="Output folder for report.html and the PNG figures.")
def attack(**opts) -> None:
    """Perturb the most influential training images of a test image to flip its prediction.

    Signed steps of I_pert,loss, projected after each step onto the allowed set (by default:
    images whose 8-bit representation is unchanged, as in Koh & Liang 2017; --radius for an
    L-infinity budget), with the top layer retrained exactly after each step. Reports the
    fraction of attacked test images whose prediction flips."""
    run_command(_attack, opts)


def _attack(opts: dict) -> None:
    clock = Clock()
    radius = EIGHT_BIT if opts["radius"] is None else opts["radius"]
    budget = Budget(radius=radius, step=opts["step"], steps=opts["steps"])  # bad values raise InputError
    out = prepare_out(opts["out"], opts["force"], (), (REPORT_NAME, "losses.png", "attack-*-*.png"))
    split = load_builtin(opts["data"])
    task = binary_task(split, opts["digits"])
    tests = check_test_index(opts["test_index"], len(task.y_test))
    counts = tuple(sorted(set(opts["perturb"]))) or (1, 2, 10)
    if max(counts) > len(task.y_train):
        raise click.BadParameter(f"{max(counts)} is more than the {len(task.y_train)} training points.",
                                 param_hint="--perturb")
    clock.announce(f"feature extractor (trained on {split.name} without digits {task.digits}, cached)")
    net, cached = load_extractor(split, task.digits, cache=opts["cache"], seed=opts["seed"], epochs=opts["epochs"])
    clock.announce(f"training the top layer on {len(task.y_train)} images of {task.name}")
    attacker = HeadAttack(net, task.X_train, task.y_train, opts["l2"])
    predicted = predict(attacker.model(), task.X_test)
    correct = np.flatnonzero(predicted == task.y_test)
    accuracy = len(correct) / len(task.y_test)
    click.echo(f"{task.name}: {len(task.y_train)} training, {len(task.y_test)} test images, "
               f"test accuracy {accuracy:.4f}; budget: {budget.describe()}")
    if not tests:
        rng = np.random.default_rng(opts["seed"])
        tests = sorted(rng.choice(correct, size=min(opts["tests"], len(correct)), replace=False).tolist())
        if opts["tests"] > len(correct):
            click.echo(f"note: --tests {opts['tests']} is more than the {len(correct)} correctly classified test "
                       f"images; attacking all {len(correct)}", err=True)
    wrong = [t for t in tests if predicted[t] != task.y_test[t]]
    if wrong:
        raise click.BadParameter(f"test point {wrong[0]} is already misclassified; attack a correctly classified "
                                 f"one (correct ones include {correct[:5].tolist()}).", param_hint="--test-index")
    with tqdm(total=len(tests) * len(counts), desc="attacks", unit="attack", file=sys.stderr) as bar:
        results = flip_fractions(attacker, task.X_test, task.y_test, tests, counts, budget, progress=bar.update)
    click.echo(f"\nattacked test points {tests}")
    click.echo(f"  {'perturbed':>9}  {'flipped':>7}  {'fraction':>8}")
    for c, rows in results.items():
        click.echo(f"  {c:>9}  {sum(r.flipped for r in rows):>7}  {flip_fraction(rows):>8.1%}")
    summary = {"data": f"{task.name}: {len(task.y_train)} train, {len(task.y_test)} test, accuracy {accuracy:.4f}",
               "model": f"frozen CNN ({cached.name}) + nn.Linear(64, 2), l2 = {opts['l2']:g}, cross-entropy",
               "budget": budget.describe(), "attacked test points": str(tests),
               "time": f"{clock.elapsed():.1f} s"}
    path = write_attack_report(out, results, task.X_test, task.image_shape, summary, f"infl attack: {task.name}")
    click.echo(f"\nreport: {path}")
    clock.done()


@click.command(short_help="Compare what an RBF SVM and a CNN rely on for a test image (paper section 5.1).")
@data_options
@click.option("--test-index", type=int, default=0, show_default=True, help="Test point of the binary task.")
@click.option("--top", type=click.IntRange(min=1), default=8, show_default=True,
              help="Most helpful training images shown per model.")
@click.option("--svm-l2", type=POSITIVE, default=1e-3, show_default=True,
              help="Weight decay of the RBF SVM.")
@click.option("--gamma", type=POSITIVE, default=None,
              help="RBF kernel width [default: 1 / (d * Var(X)), scikit-learn's 'scale'].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("infl-behaviour"), show_default=True,
              help="Output folder for report.html and influence_vs_distance.png.")
def behaviour(**opts) -> None:
    """Plot influence against pixel distance for an RBF SVM and a CNN on the same test image.

    Both models are trained on the same two digit classes: an RBF-kernel SVM (smooth hinge,
    l2) and a CNN feature extractor trained on the other digits, frozen, with a trained
    Linear top layer. Shows each model's most helpful training images (Koh & Liang 2017, Figure 4)."""
    run_command(_behaviour, opts)


def _behaviour(opts: dict) -> None:
    clock = Clock()
    out = prepare_out(opts["out"], opts["force"], (), (REPORT_NAME, "influence_vs_distance.png"))
    split = load_builtin(opts["data"])
    task = binary_task(split, opts["digits"])
    test = check_test_index((opts["test_index"],), len(task.y_test))[0]
    clock.announce(f"feature extractor (trained on {split.name} without digits {task.digits}, cached)")
    net, cached = load_extractor(split, task.digits, cache=opts["cache"], seed=opts["seed"], epochs=opts["epochs"])
    clock.announce(f"training both models on {len(task.y_train)} images of {task.name} and scoring")
    result = compare_behaviour(task, net, test, l2=opts["l2"], svm_l2=opts["svm_l2"], gamma=opts["gamma"])
    click.echo(f"test point {test}: digit {task.digits[result.label]}")
    for name, row in result.summary(10).items():
        click.echo(f"  {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))
    summary = {"data": f"{task.name}: {len(task.y_train)} train, {len(task.y_test)} test",
               SVM: f"RBF kernel features (whitened, all training points as landmarks), smooth hinge t = 0.1, "
                    f"l2 = {opts['svm_l2']:g}, gamma = {opts['gamma'] or 'scale'}",
               CNN: f"frozen CNN ({cached.name}) + nn.Linear(64, 2), cross-entropy, l2 = {opts['l2']:g}",
               "time": f"{clock.elapsed():.1f} s"}
    path = write_behaviour_report(out, result, task, opts["top"], summary, f"infl behaviour: {task.name}")
    click.echo(f"\nreport: {path}")
    clock.done()
