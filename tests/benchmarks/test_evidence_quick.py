"""`python -m benchmarks.evidence --quick` runs the whole pipeline (a smoke run, not a result)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.launch_env import ROOT, launch_env


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "benchmarks.evidence", "--quick", "--out", str(out), *args]
    done = subprocess.run(
        cmd, cwd=ROOT, env=launch_env(), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _runs(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in (out / "runs" / "quick").glob("*.json")}


def test_quick_run_reports_resumes_and_its_mean_arm_is_plain_averaging(tmp_path: Path) -> None:
    first = _run(tmp_path, "--workers", "1")
    report = first.stdout
    assert "| **avg-tinf** |" in report and "| mgda-bucket |" in report
    assert "Learning-rate selection" in report and "Per language" in report
    for img in ("evidence-trade-off.png", "evidence-quick.png"):
        assert (tmp_path / "img" / img).stat().st_size > 10_000
    runs = _runs(tmp_path)
    # Pilot (3), the rest of MGDA's grid, the second seed of both arms at their choice.
    arms = sorted((r["spec"]["arm"], r["spec"]["seed"]) for r in runs.values())
    assert arms.count(("avg-tinf", 1)) == arms.count(("mgda-bucket", 1)) == 1
    mgda = [r for r in runs.values() if r["spec"]["arm"] == "mgda-bucket"]
    assert all(
        r["hook_peak_extra_mb"] > 0 and r["diagnostics"]["cos_mean"] == r["diagnostics"]["cos_mean"]
        for r in mgda
    )

    # A second call reuses every finished run and adds only the new arm's.
    second = _run(tmp_path, "--workers", "0", "--arms", "avg-tinf", "mean")
    again = _runs(tmp_path)
    assert {k: v for k, v in again.items() if k in runs} == runs
    new = [r for k, r in again.items() if k not in runs]
    assert new and {r["spec"]["arm"] for r in new} == {"mean"}
    assert "| mean |" in second.stdout

    # The hook with `mean` and one slot per language is plain averaging (uniform layout): the
    # same losses to float rounding, run for run.
    plain = {
        (r["spec"]["lr"], r["spec"]["seed"]): r
        for r in again.values()
        if r["spec"]["arm"] == "avg-tinf"
    }
    for r in new:
        twin = plain[(r["spec"]["lr"], r["spec"]["seed"])]
        for split in ("val_loss", "test_loss"):
            for lang, value in r[split].items():
                assert abs(value - twin[split][lang]) < 1e-4, (split, lang)
