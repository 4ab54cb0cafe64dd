"""The real InterferenceMonitor (2 ranks, CSVLogger) through the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_bmoo.report.html import build_report
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
    assert "cosine — step 4" in s["cosine"].titles
