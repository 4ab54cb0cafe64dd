"""Under Lightning's launcher a stalled rank fails the other within the strategy's timeout,
and no process is left behind, whichever rank stalls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .stall_fit import STALL, TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
MARGIN = 10.0


def _processes_mentioning(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in command:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize(("stalled", "where"), [(1, "backward"), (1, "slots"), (0, "backward")])
def test_a_stalled_rank_fails_the_fit_and_leaves_no_process(tmp_path, stalled, where):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tests.faults.stall_fit", str(tmp_path), str(stalled), where],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=STALL + 60,
    )
    elapsed = time.monotonic() - start
    leftovers = _processes_mentioning(str(tmp_path))
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"processes left behind: {leftovers}"
    log = done.stderr[-3000:]
    assert done.returncode != 0, log
    assert elapsed < STALL, f"the job ended after {elapsed:.0f} s: it waited for the stall\n{log}"
    survivor = json.loads((tmp_path / f"rank{1 - stalled}.json").read_text())
    assert survivor["seconds"] is not None
    assert TIMEOUT - 0.5 <= survivor["seconds"] <= TIMEOUT + MARGIN, (survivor, log)
