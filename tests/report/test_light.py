"""The report's path imports neither torch nor Lightning, nor wandb unless a W&B log is read.

``lightning_bmoo/__init__.py`` still imports the whole package eagerly; the subprocess stands
in an empty package for it, so that only what the report itself imports is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import json, sys, types
package = types.ModuleType("lightning_bmoo")
package.__path__ = [sys.argv[1] + "/lightning_bmoo"]
sys.modules["lightning_bmoo"] = package
from lightning_bmoo.report import build_report, load_runs
from lightning_bmoo.report.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
for path in sys.argv[2:]:
    build_report(load_runs(path))
heavy = ("torch", "lightning", "wandb", "google.protobuf")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def loaded(*runs: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(ROOT), *map(str, runs)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_command_and_csv_runs_load_nothing_heavy(tmp_path: Path) -> None:
    run = tmp_path / "csv" / "version_0"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text(
        "step,interference/loss/en,interference/cos/de|en\n0,2.0,0.1\n"
    )
    assert loaded(run) == []


def test_wandb_is_imported_to_decode_wandb_logs_only(logged_twice) -> None:
    assert loaded(logged_twice[0]) == ["google.protobuf", "wandb"]
