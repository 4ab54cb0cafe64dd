"""Lightning's default launcher (popen, re-running the script per rank) and a clean exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from lightning_bmoo.strategy import BucketMOOStrategy

from .helpers import assert_params_equal, fit
from .models import LanguageData, language_of

ROOT = Path(__file__).resolve().parents[2]


def test_strategy_by_name_with_the_popen_launcher_exits_cleanly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.strategy.launch_bmoo", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rank in ranks:
        assert rank["comm_hook"] == "bucket_moo_hook"
        assert rank["hook_step"] == 3
        assert rank["nonfinite"] == "drop"
        assert rank["layouts"] == rank["expected"]
    assert_params_equal(ranks[0]["params"], ranks[1]["params"])


def test_spawn_start_method_pickles_the_strategy_and_trains(tmp_path):
    ranks = fit(
        tmp_path,
        BucketMOOStrategy("upgrad", language_fn=language_of, start_method="spawn"),
        data=LanguageData(slots_per_rank=1),
        max_steps=2,
    )
    for rank in ranks:
        assert rank["comm_hook"] == "bucket_moo_hook"
        assert rank["hook_step"] == 2
        assert rank["layouts"] == rank["expected"]
    assert_params_equal(ranks[0]["params"], ranks[1]["params"])
