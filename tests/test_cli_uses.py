"""`infl attack` end to end on the built-in digits, its report, and its error messages."""

from __future__ import annotations

import base64
import re

import pytest
from click.testing import CliRunner

from infl.cli import main


def _attack(tmp_path, *args: str):
    common = ["attack", "--data", "digits", "--epochs", "1", "--cache", str(tmp_path / "cache")]
    return CliRunner().invoke(main, [*common, *args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attack")
    out = tmp / "out"
    result = _attack(tmp, "--tests", "1", "--perturb", "1", "--perturb", "2", "--radius", "0.05", "--steps", "2",
                     "--out", str(out))
    return result, out, tmp


def test_attack_writes_a_self_contained_report(run):
    result, out, _ = run
    assert result.exit_code == 0, result.output
    assert re.search(r"perturbed\s+flipped\s+fraction", result.output)
    page = (out / "report.html").read_text()
    assert "http" not in page and "<script" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # the loss curves, then one figure per (test point, count)
    assert all(base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n" for png in images)
    assert sorted(p.name for p in out.glob("*.png"))[-1] == "losses.png"
    assert "L-inf radius 0.05" in page


def test_attack_refuses_a_non_empty_folder(run):
    _, out, tmp = run
    result = _attack(tmp, "--tests", "1", "--out", str(out))
    assert result.exit_code != 0 and "not empty" in result.output and "--force" in result.output


@pytest.mark.parametrize("args, words", [
    (["--radius", "-0.1"], "radius must be a finite number > 0"),
    (["--radius", "nan"], "radius must be a finite number > 0"),
    (["--step", "inf"], "step must be a finite number > 0"),
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--test-index", "5000"], "out of range"),
    (["--digits", "3", "3"], "two different digit classes"),
])
def test_attack_bad_input(tmp_path, args, words):
    result = _attack(tmp_path, "--out", str(tmp_path / "o"), *args)
    assert result.exit_code != 0
    assert words in result.output
    assert "Traceback" not in result.output
