"""`infl attack` and `infl behaviour` end to end on the built-in digits, their reports, and their error messages."""

from __future__ import annotations

import base64
import re

import pytest
from click.testing import CliRunner

from browser import assert_renders, requires_chromium
from infl.cli import main


def _invoke(command: str, cache, *args: str):
    return CliRunner().invoke(main, [command, "--data", "digits", "--epochs", "1", "--cache", str(cache), *args])


def _attack(tmp_path, *args: str):
    return _invoke("attack", tmp_path / "cache", *args)


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
    shown = re.findall(r"Test image (\d+):", page)
    assert {p.name for p in out.glob("*.png")} == {"losses.png", f"attack-{shown[0]}-1.png", f"attack-{shown[0]}-2.png"}
    assert "L-inf radius 0.05" in page


def test_attack_refuses_a_non_empty_folder(run):
    _, out, tmp = run
    result = _attack(tmp, "--tests", "1", "--out", str(out))
    assert result.exit_code != 0 and "not empty" in result.output and "--force" in result.output


@pytest.mark.parametrize("args, words", [
    (["--radius", "-0.1"], "'--radius': must be a finite number > 0"),
    (["--radius", "nan"], "'--radius': must be a finite number > 0"),
    (["--step", "inf"], "'--step': must be a finite number > 0"),
    (["--steps", "0"], "'--steps': 0 is not in the range x>=1"),
    (["--seed", "-1"], "'--seed': -1 is not in the range"),
    (["--seed", str(2**64)], "'--seed': 18446744073709551616 is not in the range"),
    (["--test-index", "5000"], "out of range"),
    (["--digits", "3", "3"], "two different digit classes"),
])
def test_attack_bad_input(tmp_path, args, words):
    result = _attack(tmp_path, "--out", str(tmp_path / "o"), *args)
    assert result.exit_code != 0
    assert words in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()  # a failed command leaves no empty output folder behind


def test_behaviour_writes_its_plot_and_report(run):
    _, _, tmp = run  # reuses the cached extractor
    out = tmp / "behaviour"
    result = _invoke("behaviour", tmp / "cache", "--test-index", "3", "--top", "4", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "RBF SVM: spearman |influence| vs distance" in result.output
    page = (out / "report.html").read_text()
    assert "http" not in page and "<script" not in page
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2 + 2 * 4  # test image, plot, 4 per model
    assert (out / "influence_vs_distance.png").read_bytes()[:4] == b"\x89PNG"
    again = _invoke("behaviour", tmp / "cache", "--out", str(out))
    assert again.exit_code != 0 and "not empty" in again.output


@pytest.mark.parametrize("args, words", [
    (["--test-index", "-1"], "out of range"),
    (["--gamma", "-2"], "-2"),
    (["--digits", "4", "11"], "digit class 11 has no training points"),
])
def test_behaviour_bad_input(tmp_path, args, words):
    result = _invoke("behaviour", tmp_path / "cache", "--out", str(tmp_path / "o"), *args)
    assert result.exit_code != 0 and words in result.output and "Traceback" not in result.output


def test_a_truncated_extractor_cache_is_retrained_and_a_file_is_no_cache_folder(run, tmp_path):
    """A cache file cut short (a run killed while saving, before writes were atomic) is named in a warning and
    replaced by a retrained extractor; --cache naming a file is refused before any training."""
    import shutil

    _, _, tmp = run
    cache = tmp_path / "cache"
    shutil.copytree(tmp / "cache", cache)
    (cached,) = cache.glob("*.pt")
    cached.write_bytes(cached.read_bytes()[:3000])
    result = _invoke("behaviour", cache, "--test-index", "3", "--top", "2", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert "warning: the cached extractor" in result.output and "cannot be read" in result.output
    again = _invoke("behaviour", cache, "--test-index", "3", "--top", "2", "--out", str(tmp_path / "o2"))
    assert again.exit_code == 0 and "cannot be read" not in again.output
    result = _invoke("behaviour", cached, "--out", str(tmp_path / "o3"))
    assert result.exit_code != 0 and "is a file, not a folder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o3").exists()


@requires_chromium
def test_attack_and_behaviour_reports_render_in_a_browser(run, tmp_path):
    _, out, tmp = run
    assert assert_renders(out / "report.html", tmp_path, min_images=3).images == 3
    behaviour = tmp / "behaviour-browser"
    result = _invoke("behaviour", tmp / "cache", "--test-index", "3", "--top", "2", "--out", str(behaviour))
    assert result.exit_code == 0, result.output
    assert assert_renders(behaviour / "report.html", tmp_path, min_images=2 + 2 * 2).images == 2 + 2 * 2
