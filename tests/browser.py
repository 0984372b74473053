"""Open an HTML report in headless Chromium: take a screenshot, check that every <img> rendered and that
the page logged nothing to the console. Needs Debian's `chromium` on PATH; installs nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found: install Debian's package (apt-get install -y chromium) "
                             "to check that the HTML reports render; .ci/run installs it")

# Injected into a copy of the page: records failed loads as they happen, and after the load event writes
# the state of every <img> into the DOM, where --dump-dom shows it.
_CHECK = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target; window.__errors.push(t && t.tagName ? t.tagName + " failed to load" : String(e.message));
}, true);
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var r = document.createElement("pre"); r.id = "render-check";
  r.textContent = JSON.stringify({images: imgs.length, errors: window.__errors,
    broken: imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).map(function (i) { return i.alt; })});
  document.body.appendChild(r);
});
</script>"""


@dataclass(frozen=True)
class Rendering:
    """What Chromium made of a page: its screenshot (PNG path), the number of <img>, the alt texts of
    those that did not render, load errors, and console lines."""

    screenshot: Path
    images: int
    broken: list[str]
    errors: list[str]
    console: list[str]


def render(page: Path, workdir: Path, timeout: float = 120) -> Rendering:
    """Render a copy of `page` (with the check script) in headless Chromium, network off."""
    html = page.read_text(encoding="utf-8")
    copy = workdir / f"checked-{page.stem}.html"
    copy.write_text(html.replace("<head>", "<head>" + _CHECK, 1), encoding="utf-8")
    shot = workdir / f"{page.stem}.png"
    run = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
         f"--user-data-dir={workdir / 'chromium-profile'}", f"--screenshot={shot}", "--dump-dom", copy.as_uri()],
        capture_output=True, text=True, timeout=timeout, check=False)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', run.stdout, flags=re.S)
    assert found, f"Chromium did not finish loading {page} (exit {run.returncode}):\n{run.stderr[-2000:]}"
    state = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return Rendering(shot, state["images"], state["broken"], state["errors"], console)


def assert_renders(page: Path, workdir: Path, min_images: int = 1) -> Rendering:
    """Every image rendered (naturalWidth > 0), nothing failed to load, the console stayed silent and
    the screenshot is not blank."""
    out = render(page, workdir)
    assert out.images >= min_images, f"{page}: {out.images} <img> found, expected at least {min_images}"
    assert not out.broken, f"{page}: images that did not render: {out.broken[:5]}"
    assert not out.errors, f"{page}: load errors: {out.errors[:5]}"
    assert not out.console, f"{page}: console output: {out.console[:5]}"
    pixels = imread(out.screenshot)
    assert pixels.shape[0] > 100 and float(np.std(pixels)) > 0.01, f"{page}: the screenshot is blank"
    return out
