"""The report as a browser shows it: headless Chromium, no network."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lightning_bmoo import vocabulary as vocab
from lightning_bmoo.report.cli import main

from .dom import sections
from .synthetic import write_csv_run

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)"
)


def chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp / 'profile'}", "--window-size=1400,3000",
        *args, url,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("chromium")
    write_csv_run(tmp / "logs", "mean", conflict=0.4, seed=1)
    write_csv_run(tmp / "logs", "mgda", conflict=0.2, seed=2, langs=("de", "en", "fr"))
    out = tmp / "report.html"
    assert main([str(tmp / "logs"), "-o", str(out), "--snapshots", "3"]) == 0
    return out


def test_dom_as_rendered(report: Path) -> None:
    dom = chromium(report.parent, report.as_uri(), "--dump-dom").stdout
    s = sections(dom)
    assert s["losses"].svgs == 3 * 2 + 2
    assert s["conflict"].svgs == 4
    assert s["cosine"].svgs == 2 * (3 + 1 + 20)
    assert s["affinity"].svgs == 2 * (3 + 1 + 20)
    assert s["weights"].svgs == 4 and s["gradients"].svgs == 6
    assert s["update"].svgs == 3 and s["comm"].svgs == 3
    assert "Validation loss per language — mean/version_0" in s["losses"].titles
    assert f"{vocab.COS.title} — step 190" in s["cosine"].titles
    assert vocab.CONFLICT_RATE.title in s["conflict"].titles
    assert vocab.UPDATE_RATIO.title in s["update"].titles
    # mgda has no "sw": its cells read "–", the language still has a row.
    results = " ".join(s["results"].text)
    assert "sw" in results and "–" in results


# Measures, as laid out, every visible <text> against the <svg> it is drawn in.
_MEASURE = """<script>
var clipped = [];
document.querySelectorAll('svg').forEach(function (svg) {
  var box = svg.getBoundingClientRect();
  if (!box.width) return;  // a hidden slider frame
  svg.querySelectorAll('text').forEach(function (t) {
    var r = t.getBoundingClientRect();
    if (r.width && (r.left < box.left - 1 || r.right > box.right + 1))
      clipped.push(svg.getAttribute('aria-label') + ': ' + t.textContent);
  });
});
document.body.setAttribute('data-clipped', JSON.stringify(clipped));
</script>"""


def test_no_label_is_clipped(report: Path) -> None:
    measured = report.parent / "measured.html"
    measured.write_text(report.read_text().replace("</body>", _MEASURE + "</body>"))
    dom = chromium(report.parent, measured.as_uri(), "--dump-dom").stdout
    found = re.search(r'data-clipped="([^"]*)"', dom)
    assert found, "the measuring script did not run"
    assert json.loads(html.unescape(found.group(1))) == []
    # Affinities of 1e-7 .. 3e-5: the colour bar's labels are whole and cells say more than 0.
    s = sections(dom)
    bar = next(t for label, t in s["affinity"].svg_texts if label.startswith("colour scale"))
    assert any("e-5" in text for _, _, text in bar)
    cells = [v for values in s["affinity"].cell_values(vocab.AFFINITY.title) for v in values]
    assert cells and not {"0.00", "-0.00"} & set(cells)


def test_tick_labels_are_distinct(report: Path) -> None:
    s = sections(chromium(report.parent, report.as_uri(), "--dump-dom").stdout)
    for sid, info in s.items():
        for ticks in info.y_ticks():
            assert len(set(ticks)) == len(ticks), (sid, ticks)


def test_screenshot(report: Path) -> None:
    png = report.parent / "report.png"
    chromium(report.parent, report.as_uri(), f"--screenshot={png}")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 50_000  # charts drawn, not a blank page
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as im:
        assert im.size == (1400, 3000)
        # Line colours and heatmap fills: far more than a blank or text-only page.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 500
