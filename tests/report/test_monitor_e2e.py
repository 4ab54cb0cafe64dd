"""The real InterferenceMonitor (2 ranks; CSV, and CSV with W&B) through the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_bmoo import vocabulary as vocab
from lightning_bmoo.report import build_report
from lightning_bmoo.report.sources import load_runs

from .dom import sections

fits = pytest.importorskip("tests.callbacks.fits", reason="monitor test helpers not present")


def test_report_of_a_monitored_run(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from lightning_bmoo.callbacks import InterferenceMonitor
    from tests.strategy.models import LanguageData

    fits.fit(
        tmp_path,
        InterferenceMonitor(log_every_n_steps=2),
        logger=CSVLogger(save_dir=str(tmp_path), name="csv"),
        data=LanguageData(slots_per_rank=2),
        accumulate_grad_batches=2,
    )
    (run,) = load_runs(tmp_path / "csv")
    s = sections(build_report([run]))
    # Whatever the monitor logs by default is drawn, not skipped.
    for sid in ("conflict", "cosine", "affinity", "weights", "gradients", "update", "comm"):
        assert s[sid].svgs > 0, sid
    assert s["losses"].svgs >= 1
    assert f"{vocab.COS.title} — step 4" in s["cosine"].titles


def test_monitored_run_logged_to_wandb_and_csv(tmp_path: Path, monkeypatch) -> None:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from lightning_bmoo.callbacks import InterferenceMonitor
    from lightning_bmoo.report import read_run, wait_for_run
    from lightning_bmoo.report.cli import main
    from tests.strategy.models import LanguageData

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    fits.fit(
        tmp_path,
        InterferenceMonitor(log_every_n_steps=1),
        logger=[
            CSVLogger(save_dir=str(tmp_path), name="csv"),
            WandbLogger(offline=True, save_dir=str(tmp_path), name="both"),
        ],
        data=LanguageData(slots_per_rank=2),
        accumulate_grad_batches=2,
    )
    (run_dir,) = [p.parent for p in tmp_path.glob("wandb/offline-run-*/run-*.wandb")]
    wait_for_run(run_dir)
    wb = read_run(run_dir)
    # The conflicts tables say the step of the x axis (trainer/global_step), not the hook's.
    key = vocab.MONITOR_PREFIX + vocab.CONFLICTS.family
    rows = [r for r in wb.history if key in r]
    assert [r[vocab.STEP_METRIC] for r in rows] == [1, 2, 3, 4]
    listed = 0
    for i, row in enumerate(rows):
        table = wb.table(key, i)
        assert table["columns"] == list(vocab.CONFLICT_COLUMNS)
        for step, *_, cosine, _numel in table["data"]:
            assert step == row[vocab.STEP_METRIC] and cosine < 0
            listed += 1
    assert listed > 0
    # Both logs hold the same run: the report shows it once, with its last table.
    out = tmp_path / "r.html"
    assert main([str(tmp_path), "-o", str(out)]) == 0
    s = sections(out.read_text())
    assert s["overview"].classes["run"] == 1
    last = wb.table(key)["data"]
    words = " ".join(s["groups"].text)
    assert "logging step 4" in words
    assert (s["groups"].tags["tr"] == len(last) + 1) if last else "No conflicting group" in words
