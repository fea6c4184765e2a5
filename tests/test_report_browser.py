"""The HTML report in a real headless Chromium: it loads, every image renders, no console errors.

The report is copied with a probe injected (a script first in <head> that records errors and
console.error calls, and one at load that measures every <img>); Chromium's --dump-dom prints the
page after load, probe results included. Skipped, with the reason, only when chromium is absent
(.ci/run installs Debian's chromium).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from whycam.report import Report
from whycam.viz import curve_figure, grid_figure, overlay

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)),
    None,
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

PROBE_HEAD = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || (e.target && e.target.src
  && 'failed to load ' + e.target.src.slice(0, 40)) || 'error')), true);
const __consoleError = console.error;
console.error = (...args) => { window.__errors.push(args.join(' ')); __consoleError(...args); };
</script>"""
PROBE_LOAD = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({complete: i.complete, width: i.naturalWidth}));
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({images, errors: window.__errors, title: document.title});
  document.body.appendChild(out);
});
</script>"""


def browse(page: Path, tmp_path: Path) -> dict:
    """Open ``page`` (with the probe injected into a copy) in headless Chromium; return the probe."""
    text = page.read_text(encoding="utf-8")
    probed = tmp_path / f"probed_{page.name}"
    probed.write_text(
        text.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_LOAD + "</body>", 1),
        encoding="utf-8",
    )
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
    assert match, f"chromium printed no probe (exit {result.returncode}): {result.stderr[-2000:]}"
    import html

    return json.loads(html.unescape(match.group(1)))


def _report(path: Path) -> Path:
    images = torch.rand(2, 3, 24, 24)
    maps = {"a": torch.rand(2, 24, 24), "b": torch.zeros(2, 24, 24)}
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    report = Report("browser test <&> report")
    report.paragraph("Text with <tags> & ampersands is escaped.")
    report.figure(grid_figure(images, maps, row_titles=["x", "y"], column_notes={"a": "1 ms"}), "grid")
    report.figure(overlay(images[0], maps["a"][0]), "overlay array")
    report.figure(curve_figure({"a": ([0, 1, 2], [1.0, 0.5, 0.2])}, title="curve"), "curve")
    report.figure(figure)
    report.table([{"method": "a", "value": 0.5}, {"method": "b", "value": float("nan")}])
    return report.save(path)


def test_report_renders_every_image_without_errors(tmp_path):
    probe = browse(_report(tmp_path / "report.html"), tmp_path)
    assert probe["title"] == "browser test <&> report"
    assert len(probe["images"]) == 4
    assert all(image["complete"] and image["width"] > 0 for image in probe["images"]), probe["images"]
    assert probe["errors"] == []


def test_probe_catches_a_broken_image(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><title>t</title></head><body><img src="data:image/png;base64,AAAA"></body></html>'
    )
    probe = browse(page, tmp_path)
    assert probe["images"][0]["width"] == 0 and probe["errors"]


def test_cli_explain_report_in_the_browser(tmp_path):
    from click.testing import CliRunner

    from whycam.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )
    tiny = f"{Path(__file__).parent / 'tiny_model.py'}:make"
    result = CliRunner().invoke(
        main,
        [
            "explain",
            str(folder),
            "--model",
            tiny,
            "--method",
            "gradcam,eigencam",
            "--out",
            str(tmp_path / "out"),
            "--report",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    probe = browse(tmp_path / "out" / "report.html", tmp_path)
    assert probe["images"] and all(image["width"] > 0 for image in probe["images"])
    assert probe["errors"] == []


def test_cli_evaluate_report_in_the_browser(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from whycam.cli import main

    root = tmp_path / "dataset"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:20, 8:20] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    tiny = f"{Path(__file__).parent / 'tiny_model.py'}:make"
    args = [
        "evaluate",
        str(root),
        "--model",
        tiny,
        "--method",
        "gradcam",
        "--metrics",
        "auprc,deletion",
        "--out",
        str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    probe = browse(tmp_path / "out" / "report.html", tmp_path)
    assert len(probe["images"]) >= 2 and all(image["width"] > 0 for image in probe["images"])
    assert probe["errors"] == []
