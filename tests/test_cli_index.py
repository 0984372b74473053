"""`infl index` then `infl query`: the printed top points are those of the exact scores."""

from __future__ import annotations

import re

import numpy as np
import torch
from click.testing import CliRunner

from infl import Influence
from infl.cli import cross_entropy, load_data, main
from infl.cli_index import _linear


def test_index_then_query_matches_exact_scores(tmp_path) -> None:
    out = tmp_path / "idx"
    run = CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(out), "--max-memory", "2GB"])
    assert run.exit_code == 0, run.output
    assert "plan (budget 1,907 MiB" in run.output and "index of 1438 training points" in run.output
    run = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "5", "--top", "3"])
    assert run.exit_code == 0, run.output
    shown = [int(i) for i in re.findall(r"train\s+(\d+)", run.output)]
    split = load_data("digits", None, None, None, ())
    inf = Influence(_linear(split, out), cross_entropy, l2=0.01, solver="exact")
    inf.fit((torch.as_tensor(split.X_train), torch.as_tensor(split.y_train)))
    scores = inf.scores((torch.as_tensor(split.X_test[[5]]), torch.as_tensor(split.y_test[[5]])))[0].numpy()
    order = np.argsort(-scores)
    assert shown == order[:3].tolist() + order[::-1][:3].tolist()


def test_index_refuses_a_foreign_folder_and_query_another_setting(tmp_path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    run = CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(tmp_path)])
    assert run.exit_code != 0 and "not empty and holds no index" in run.output
    assert (tmp_path / "mine.txt").read_text() == "keep"
    out = tmp_path / "idx"
    assert CliRunner().invoke(main, ["index", "--data", "digits", "--out", str(out), "--project", "40"]).exit_code == 0
    run = CliRunner().invoke(main, ["query", str(out), "--data", "digits", "--test-index", "0", "--l2", "0.1"])
    assert run.exit_code != 0 and "l2: index 0.01, now 0.1" in run.output
    assert "infl index --force" in run.output and "force=True" not in run.output  # the CLI's spelling of the fix
