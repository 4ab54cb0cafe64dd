"""examples/quickstart.py runs as its docstring says: two CPU ranks, logs and a report."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from tests.launch_env import ROOT, launch_env


def test_quickstart_trains_on_two_ranks_and_writes_the_report(tmp_path: Path) -> None:
    env = launch_env()
    cmd = [sys.executable, "-m", "examples.quickstart", "--steps", "20", "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    log_dir = tmp_path / "quickstart" / "version_0"
    assert f"conflict report: {log_dir / 'report.html'}" in done.stdout
    html = (log_dir / "report.html").read_text(encoding="utf-8")
    assert "<title>quickstart" in html
    with (log_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("interference/loss/de")]
    assert [int(r["step"]) for r in logged] == [5, 10, 15, 20]
    for lang in ("de", "en", "ru"):
        losses = [float(r[f"interference/loss/{lang}"]) for r in logged]
        assert losses[-1] < losses[0], lang  # it learns
    # Every language conflicts with some other at some step: the toy does what it claims.
    assert any(float(r["interference/cos_min"]) < 0 for r in logged)
