"""Every tool's HTML report opened in headless Chromium: images rendered, console silent, screenshot taken.

Skips (with the install command) when Chromium is absent; .ci/run installs it.
"""

from __future__ import annotations

import torch
from click.testing import CliRunner

from browser import assert_renders, render, requires_chromium
from infl import Influence
from infl.cli import main
from infl.losses import cross_entropy
from infl.mismatch import find_drivers, over_represented
from infl.mismatch_report import write_mismatch_report
from infl.report import write_page
from infl.train import fit_logistic
from infl.triage import check_claim, rank_for_checking, triage
from infl.triage_report import write_ranking_report, write_triage_report
from test_triage import small_digits

pytestmark = requires_chromium


def test_the_check_catches_a_broken_image_and_console_output(tmp_path):
    page = write_page(tmp_path / "bad.html", "bad", ['<img src="data:image/png;base64,AAAA" alt="broken one">',
                                                      "<script>console.error('boom')</script>"])
    out = render(page, tmp_path)
    assert out.images == 1 and out.broken == ["broken one"] and out.errors == ["IMG failed to load"]
    assert any("boom" in line for line in out.console)


def test_explain_report_renders(tmp_path):
    out = tmp_path / "explain"
    result = CliRunner().invoke(main, ["explain", "--data", "digits", "--loo", "3", "--top", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert assert_renders(out / "report.html", tmp_path, min_images=3 * 5 + 1).images == 3 * 5 + 1


def test_triage_report_renders(tmp_path):
    split = small_digits(160, 40)
    runs = triage(split, flip=0.1, seeds=(0, 1), fixed=(0.2,))
    page = write_triage_report(tmp_path / "triage.html", runs, check_claim(runs), split.X_train, split.y_train,
                               runs[0].noisy, split.image_shape, {"data": "digits-small"}, top=6)
    assert assert_renders(page, tmp_path).images == 1 + 6


def test_triage_as_is_report_renders(tmp_path):
    split = small_digits(120, 30)
    model = fit_logistic(split.X_train, split.y_train, split.classes, 0.01)
    ranking = rank_for_checking(Influence(model, cross_entropy, l2=0.01).fit((split.X_train, split.y_train)))
    page = write_ranking_report(tmp_path / "ranking.html", ranking, split.X_train, split.y_train, None,
                                {"data": "digits-small"}, top=5)  # no image shape: feature bar charts
    assert assert_renders(page, tmp_path).images == 5 + 1


def test_mismatch_report_renders(tmp_path):
    split = small_digits(150, 40)
    model = fit_logistic(split.X_train, split.y_train, split.classes, 0.01)
    inf = Influence(model, cross_entropy, l2=0.01).fit((split.X_train, split.y_train))
    wrong = (model(torch.as_tensor(split.X_test)).argmax(1).numpy() != split.y_test).nonzero()[0]
    drivers = find_drivers(inf, (split.X_test, split.y_test), wrong[:3], k=6)
    values = over_represented(split.X_train, drivers.top)
    page = write_mismatch_report(tmp_path / "mismatch.html", drivers, values, split.X_train, split.y_train,
                                 split.image_shape, {"data": "digits-small"})
    assert assert_renders(page, tmp_path).images == 6 + 1
