"""`infl index` and `infl query`: a persistent index of the paper's MNIST model, and top-k queries against it.

Both run under `torchrun --nproc-per-node N -m infl.cli ...` as well: the
training data is sharded across ranks and rank 0 prints.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path

import click
import numpy as np
import torch
from torch import nn

from . import dist, store
from .cli import NONNEGATIVE, check_l2_damping, cross_entropy, load_data, run_command, train_model
from .data import BUILTINS, Split
from .budget import parse_bytes
from .index import MAX_SEED, Index, check_project, require_complete
from .influence import Influence

MODEL = "model.npz"  # the trained nn.Linear's weight and bias, beside the index files


def _echo(text: str) -> None:
    if dist.world()[0] == 0:
        click.echo(text)


UNREADABLE = (ValueError, OSError, KeyError, EOFError, TypeError, AttributeError, zipfile.BadZipFile)  # np.load's


def _linear(split: Split, folder: Path) -> nn.Linear:
    """The model saved in the index folder, as nn.Linear(d, classes) float64."""
    path = folder / MODEL
    if not path.exists():
        raise click.ClickException(f"{folder} holds no {MODEL}; build it with `infl index --out {folder}`.")
    try:
        with np.load(path) as npz:
            saved = {"weight": npz["weight"], "bias": npz["bias"]}
    except UNREADABLE as error:
        raise click.ClickException(f"cannot read the model in {path} ({error}); rebuild the index with "
                                   f"`infl index --out {folder} --force`.") from error
    model = nn.Linear(split.X_train.shape[1], split.classes).double()
    if tuple(saved["weight"].shape) != tuple(model.weight.shape):
        raise click.ClickException(f"the model in {path} has shape {saved['weight'].shape}, but the data needs "
                                   f"{tuple(model.weight.shape)}; pass the --data the index was built on.")
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(saved["weight"]))
        model.bias.copy_(torch.as_tensor(saved["bias"]))
    return model


@click.command(short_help="Write a persistent influence index of the paper's MNIST model.")
@click.option("--data", type=click.Choice(BUILTINS), default="mnist", show_default=True, help="Built-in data set.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Index folder.")
@click.option("--project", type=click.IntRange(min=1), help="Store gradients projected to this many numbers "
              "[default: full gradients, exact scores].")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Seed of the projection.")
@click.option("--max-memory", help="Memory budget that sets chunk sizes, e.g. 4GB [default: none].")
@click.option("--l2", type=NONNEGATIVE, default=0.01, show_default=True, help="Weight decay of training.")
@click.option("--damping", type=NONNEGATIVE, default=0.0, show_default=True, help="Added to the Hessian only.")
@click.option("--force", is_flag=True, help="Rebuild an index made with other settings in --out.")
def index(**opts: object) -> None:
    """Train the paper's logistic regression and write its influence index into --out.

    The folder holds the training gradients (numpy .npy chunks, checksummed), the Cholesky
    factor of the curvature, a manifest (JSON) and the model; a killed run resumes when started again."""
    run_command(_index, opts, spellings=_SPELLINGS["index"])


def _index(opts: dict) -> None:
    dist.init()
    out = opts["out"]
    _check_out(out, opts["force"])
    check_l2_damping(opts)
    split = load_data(opts["data"], None, None, None, ())
    p = (split.X_train.shape[1] + 1) * split.classes
    check_project(opts["project"], p)  # before the training, as every other option
    if opts["max_memory"] is not None:
        parse_bytes(opts["max_memory"])
    created = not out.exists()
    try:
        _build(opts, split, out)
    except BaseException:
        if created and dist.world()[0] == 0 and not (out / "manifest.json").exists():  # nothing but our model yet
            (out / MODEL).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise


def _build(opts: dict, split: Split, out: Path) -> None:
    fresh = not (out / "manifest.json").exists()  # a new or empty folder, or one holding only our model.npz
    resume = not fresh and not opts["force"] and (out / MODEL).exists()
    model = _linear(split, out) if resume else train_model(split, opts["l2"])  # a resume indexes the same model
    for p in model.parameters():  # every rank indexes rank 0's model
        dist.broadcast_(p.data)
    if dist.world()[0] == 0 and not resume:  # saved first, so a killed build resumes with these very weights
        out.mkdir(parents=True, exist_ok=True)
        store.write_atomic(out / MODEL, _npz(model, split.name))
    dist.barrier()
    inf = Influence(model, cross_entropy, l2=opts["l2"], damping=opts["damping"])
    train = (torch.as_tensor(split.X_train), torch.as_tensor(split.y_train))
    idx = Index.build(inf, out, train, project=opts["project"], seed=opts["seed"], max_memory=opts["max_memory"],
                      force=opts["force"] or fresh)  # fresh: _check_out refused foreign folders already
    _echo(f"index of {idx.n} training points, {idx.k} numbers each, written to {out}"
          + (f" (the model saved in {out / MODEL}, not retrained)" if resume else ""))


def _check_out(out: Path, force: bool) -> None:
    """Refuse, before the (long) training, a file, a folder under a file or a foreign folder as --out."""
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"--out {out} is a file; give a folder for the index.")
    above = next(part for part in (out, *out.absolute().parents) if part.exists())
    if not above.is_dir():
        raise click.ClickException(f"cannot write the output: {above} is a file, so --out {out} cannot be created; "
                                   "choose another --out.")
    if out.exists() and any(p.name != MODEL for p in out.iterdir()) and not (out / "manifest.json").exists() \
            and not force:
        raise click.ClickException(f"--out {out} is not empty and holds no index; choose another folder, or pass "
                                   "--force.")


_SPELLINGS = {  # the library's advice, as the command line spells it (first match first)
    "index": (("Index.build with force=True", "infl index --force"), ("force=True", "--force"),
              ("pass project=k", "pass --project K"),
              ("project must be None (store the full gradients) or an integer k with 1 <= k",
               "--project (leave it out to store full gradients) must be an integer K with 1 <= K"),
              ("lower project", "lower --project"),
              ("raise max_memory", "raise --max-memory"), ("max_memory=", "--max-memory "),
              ("max_memory must", "--max-memory must"),
              ("Run Index.build", "Run infl index"), ("run Index.build", "run infl index")),
    "query": (("Use the model, data and settings it was built with, or another folder, or rebuild it (Index.build "
               "with force=True)",
               "Its model.npz is not the model the index was built from (query always uses the index's own "
               "settings): put the original back, or rebuild the index with infl index --force"),
              ("Index.build with force=True", "infl index --force"),
              ("force=True", "infl index --force"),
              ("Run Index.build with the same model, data and settings to resume it", "Run the same infl index "
               "command again (same --out, --data and options) to resume it"),
              ("Run Index.build", "Run infl index"), ("run Index.build", "run infl index"),
              ("build one with Index.build", "build one with infl index")),
}


def _npz(model: nn.Linear, data: str) -> bytes:
    """model.npz: the weights, and the name of the built-in data set it was trained on (for infl query)."""
    buf = io.BytesIO()
    np.savez(buf, weight=model.weight.detach().numpy(), bias=model.bias.detach().numpy(), data=np.array(data))
    return buf.getvalue()


def _built_on(folder: Path) -> str:
    """The built-in data set named in the folder's model.npz; mnist for a folder written without the name."""
    with contextlib.suppress(*UNREADABLE), np.load(folder / MODEL) as npz:
        return str(npz["data"])
    return "mnist"


@click.command(short_help="Most harmful and helpful training points of test points, from an index.")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--data", type=click.Choice(BUILTINS), default=None,
              help="The built-in data set of the test points [default: the one the index was built on].")
@click.option("--test-index", type=int, multiple=True, required=True, help="Test point (repeatable).")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="Points shown per side.")
def query(**opts: object) -> None:
    """Print the top training points by I_up,loss (positive = harmful) for each --test-index.

    Reads only the index (streamed chunk by chunk), never the training gradients again; l2 and damping are
    the index's own."""
    run_command(_query, opts, spellings=_SPELLINGS["query"], failed_io="read the index")


def _query(opts: dict) -> None:
    folder, test_index = opts["folder"], list(dict.fromkeys(opts["test_index"]))  # each point once, as explain
    built = require_complete(folder)["config"]  # an unfinished or missing index says so before the model is looked for
    l2, damping = built["l2"], built["damping"]
    split = load_data(opts["data"] or _built_on(folder), None, None, None, ())
    bad = [t for t in test_index if not 0 <= t < len(split.y_test)]
    if bad:
        raise click.ClickException(f"--test-index {bad[0]} is out of range: the test set has "
                                   f"{len(split.y_test)} points.")
    idx = Index.open(folder, Influence(_linear(split, folder), cross_entropy, l2=l2, damping=damping))
    test = (torch.as_tensor(split.X_test[test_index]), torch.as_tensor(split.y_test[test_index]))
    for largest, title in ((True, "most harmful"), (False, "most helpful")):
        values, rows = idx.top_k(test, min(opts["top"], idx.n), largest=largest)
        for t, vals, rws in zip(test_index, values.tolist(), rows.tolist()):
            _echo(f"test point {t} (label {split.y_test[t]}), {title}:")
            shown = [(v, i) for v, i in zip(vals, rws) if (v > 0 if largest else v < 0)]  # harmful > 0, helpful < 0
            for rank, (v, i) in enumerate(shown, 1):
                _echo(f"  {rank:>3}  train {i:>6}  label {split.y_train[i]}  score {v:+.4g}")
            if len(shown) < opts["top"]:
                _echo(f"  (only {len(shown)} training points have a score of this sign)")
