"""`infl index` then `infl query`: the printed top points are those of the exact scores."""

from __future__ import annotations

import errno
import json
import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from infl import Influence
from infl.cli import cross_entropy, load_data, main
from infl.cli_index import _linear

BUILD = ["index", "--data", "digits", "--max-memory", "2GB"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A full digits index built once by `infl index`, and what the command printed."""
    out = tmp_path_factory.mktemp("built") / "idx"
    run = CliRunner().invoke(main, BUILD + ["--out", str(out)])
    assert run.exit_code == 0, run.output
    return out, run.output


def test_index_then_query_matches_exact_scores(built) -> None:
    out, output = built
    assert "plan (budget 1,907 MiB" in output and "index of 1438 training points" in output
    run = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "5", "--top", "3",
                                    "--test-index", "5"])  # a repeat is shown once
    assert run.exit_code == 0, run.output
    shown = [int(i) for i in re.findall(r"train\s+(\d+)", run.output)]
    split = load_data("digits", None, None, None, ())
    inf = Influence(_linear(split, out), cross_entropy, l2=0.01, solver="exact")
    inf.fit((torch.as_tensor(split.X_train), torch.as_tensor(split.y_train)))
    scores = inf.scores((torch.as_tensor(split.X_test[[5]]), torch.as_tensor(split.y_test[[5]])))[0].numpy()
    order = np.argsort(-scores)
    assert shown == order[:3].tolist() + order[::-1][:3].tolist()


def test_query_takes_the_data_the_index_was_built_on(built) -> None:
    out, _ = built
    plain = CliRunner().invoke(main, ["query", str(out), "--test-index", "5", "--top", "3"])
    named = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "5", "--top", "3"])
    assert plain.exit_code == 0 and plain.output == named.output, plain.output


def test_index_refuses_a_foreign_folder_and_query_another_setting(tmp_path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    run = CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(tmp_path)])
    assert run.exit_code != 0 and "not empty and holds no index" in run.output
    assert (tmp_path / "mine.txt").read_text() == "keep"
    out = tmp_path / "idx"
    assert CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(out), "--project", "40"]).exit_code == 0
    run = CliRunner().invoke(main, ["query", str(out), "--test-index", "0", "--l2", "0.1"])
    assert run.exit_code != 0 and "No such option '--l2'" in run.output  # the index's own l2: no other is possible
    with np.load(out / "model.npz") as npz:
        saved = dict(npz)
    np.savez(out / "model.npz", **{**saved, "bias": saved["bias"] + 1e-3})  # another model than the index's
    run = CliRunner().invoke(main, ["query", str(out), "--test-index", "0"])
    assert run.exit_code != 0 and "model parameters differ" in run.output
    assert "infl index --force" in run.output and "force=True" not in run.output  # the CLI's spelling of the fix
    assert "model.npz is not the model the index was built from" in run.output
    np.savez(out / "model.npz", **saved)
    run = CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(out), "--project", "40", "--l2", "0.1"])
    assert run.exit_code != 0 and "l2: index 0.01, now 0.1" in run.output
    assert "stationary" not in run.output  # the saved model checked against the other l2 warns for nothing


def test_query_uses_the_l2_the_index_was_built_with_and_stops_quietly_on_a_closed_pipe(tmp_path) -> None:
    import subprocess
    import sys

    out = tmp_path / "idx"
    assert CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(out), "--project", "40",
                                     "--l2", "0.001"]).exit_code == 0
    run = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "0"])
    assert run.exit_code == 0, run.output
    many = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "0", "--top", "1000"])
    harmful, helpful = many.output.split("most helpful")
    scores = lambda text: [float(v) for v in re.findall(r"score ([+-][0-9.e+-]+)", text)]  # noqa: E731
    assert scores(harmful) and min(scores(harmful)) > 0 and scores(helpful) and max(scores(helpful)) < 0
    assert "training points have a score of this sign" in many.output
    piped = subprocess.run(f"{sys.executable} -m infl.cli query {out} --data digits --test-index 0 --top 300 | head -1",
                           shell=True, capture_output=True, text=True)
    assert piped.stdout.startswith("test point 0") and "Broken pipe" not in piped.stderr, piped.stderr


@pytest.mark.parametrize("args", [
    ["index", "--data", "digits", "--out", "{tmp}/idx", "--seed", "-1"],
    ["index", "--data", "digits", "--out", "{tmp}/idx", "--l2", "nan"],
    ["index", "--data", "digits", "--out", "{tmp}/idx", "--damping", "inf"],
], ids=["index-seed", "index-l2", "index-damping"])
def test_bad_numbers_are_refused_before_any_work(tmp_path, args) -> None:
    run = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert run.exit_code == 2 and f"Invalid value for '{args[-2]}'" in run.output, run.output
    assert not (tmp_path / "idx").exists()


def test_an_unwritable_out_is_a_one_line_error(tmp_path, monkeypatch) -> None:
    (tmp_path / "some_file.csv").write_text("x\n")
    run = CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(tmp_path / "some_file.csv" / "sub")])
    assert run.exit_code == 1 and isinstance(run.exception, SystemExit), run.output
    assert "cannot write the output" in run.output and "some_file.csv is a file" in run.output
    assert "choose another --out" in run.output
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("infl.cli_index.Index.build", full)
    run = CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(tmp_path / "idx")])
    assert run.exit_code == 1 and isinstance(run.exception, SystemExit), run.output
    assert "Error: cannot write the output: [Errno 28] No space left on device" in run.output


def test_a_budget_too_small_lists_what_it_must_hold(tmp_path) -> None:
    run = CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(tmp_path / "idx"),
                                    "--max-memory", "1MB"])
    assert run.exit_code == 1, run.output
    message = run.output.splitlines()[-1]
    assert message.startswith("Error: --max-memory 0.954 MiB is too small: process so far"), message  # 1MB = 10^6
    assert "training data" in message and "curvature 650 x 650" in message and "listed in the plan" not in message
    assert re.search(r"raise --max-memory to at least \d+MiB \(the need \+ 5%: .*\) or pass --project K", message), message
    assert "max_memory" not in message and "project=" not in message
    assert not (tmp_path / "idx").exists()  # the folder it made, model included, is gone: nothing to resume


@pytest.mark.parametrize("args, message", [
    (["--max-memory", "4XB"], "--max-memory must be a positive size"),
    (["--project", "100000"], "--project (leave it out to store full gradients) must be an integer K with 1 <= K < p"),
    (["--l2", "0"], "pass --damping 0.001, or --l2 > 0"),
])
def test_options_are_checked_before_the_training(tmp_path, monkeypatch, args, message) -> None:
    """Checked only after the model was trained, these failed seconds (minutes on larger data) into the run and
    left the folder behind with the model in it; --l2 0 without --damping was accepted and gave scores of 1e-32."""
    monkeypatch.setattr("infl.cli_index.train_model", lambda *a: pytest.fail("trained before checking the options"))
    run = CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(tmp_path / "idx"), *args])
    assert run.exit_code in (1, 2) and message in run.output.replace("\n", " "), run.output
    assert not (tmp_path / "idx").exists()


def test_query_of_a_build_killed_before_its_curvature_says_so(built, tmp_path) -> None:
    out = tmp_path / "killed"
    shutil.copytree(built[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    (out / "curvature.npy").unlink()
    run = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "0"])
    assert run.exit_code == 1 and "is incomplete: its curvature factor was not written" in run.output, run.output


def test_query_of_a_killed_build_reports_it_and_the_rerun_resumes(built, tmp_path) -> None:
    out = tmp_path / "killed"
    shutil.copytree(built[0], out)  # then undo what a build does after its first chunk: a killed build's folder
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_chunks"] == 2
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    for name in ("model.npz", "curvature.npy", "curvature.json", "grads/000001.npy", "grads/000001.json"):
        (out / name).unlink()
    first = (out / "grads" / "000000.npy").stat()
    run = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "0"])
    assert run.exit_code == 1, run.output
    assert f"the index in {out} is incomplete: 1 of 2 gradient chunks were written" in run.output
    assert "Run the same infl index command again" in run.output and "model.npz" not in run.output
    assert "Index.build" not in run.output
    run = CliRunner().invoke(main, BUILD + ["--out", str(out)])
    assert run.exit_code == 0 and "resuming" in run.output, run.output
    assert (out / "grads" / "000000.npy").stat().st_mtime_ns == first.st_mtime_ns  # kept, not recomputed
    assert CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "0"]).exit_code == 0


def test_query_of_a_corrupt_model_file_says_to_rebuild(built, tmp_path) -> None:
    out = tmp_path / "corrupt"
    shutil.copytree(built[0], out)
    (out / "model.npz").write_bytes(b"not a numpy archive")
    run = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "0"])
    assert run.exit_code == 1 and "cannot read the model in" in run.output and "--force" in run.output, run.output
    assert "Traceback" not in run.output


def test_a_resumed_build_indexes_the_saved_model_without_retraining(built, tmp_path, monkeypatch) -> None:
    """model.npz is written before the gradients, so a killed build resumes with the very same weights (a retrain
    under another thread count could differ in the last bits and be refused as another model)."""
    import infl.cli_index

    out = tmp_path / "killed"
    shutil.copytree(built[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    for name in ("curvature.npy", "curvature.json", "grads/000001.npy", "grads/000001.json"):
        (out / name).unlink()

    def no_training(*args, **kwargs):
        raise AssertionError("the resume retrained the model")

    monkeypatch.setattr(infl.cli_index, "train_model", no_training)
    run = CliRunner().invoke(main, BUILD + ["--out", str(out)])
    assert run.exit_code == 0 and "resuming" in run.output and "not retrained" in run.output, run.output
    assert CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "0"]).exit_code == 0
    only_model = tmp_path / "only-model"  # a build killed right after saving its model is no foreign folder
    only_model.mkdir()
    shutil.copy(out / "model.npz", only_model / "model.npz")
    monkeypatch.undo()
    assert CliRunner().invoke(main, BUILD + ["--out", str(only_model)]).exit_code == 0
