"""A real offline W&B run (written by Lightning's WandbLogger) through the report."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from lightning_bmoo.report import wait_for_run
from lightning_bmoo.report.__main__ import main
from lightning_bmoo.report.sources import find_runs, load_runs

from .dom import sections
from .synthetic import metrics_at, write_csv_run

wandb = pytest.importorskip("wandb")
LANGS = ["de", "en", "fr"]


@pytest.fixture(scope="module")
def wandb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lightning.pytorch.loggers import WandbLogger

    root = tmp_path_factory.mktemp("wb")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    try:
        logger = WandbLogger(offline=True, save_dir=str(root), project="bmoo", name="mgda-wb")
        logger.log_hyperparams({"aggregator": "mgda", "lr": 3e-4})
        rng = random.Random(0)
        for step in range(40):
            logger.log_metrics(metrics_at(step, LANGS, rng, 0.3), step=step)
        val = {f"val/loss/{lang}": 2.0 + i / 10 for i, lang in enumerate(LANGS)}
        logger.log_metrics({**val, "val/loss": 2.1}, step=39)
    finally:
        wandb.finish()
        mp.undo()
    # wandb.finish() can return while its writer still flushes the log.
    (run_dir,) = [p.parent for p in root.rglob("run-*.wandb")]
    wait_for_run(run_dir)
    return root


def test_reads_offline_run(wandb_dir: Path) -> None:
    assert [source for source, _ in find_runs(wandb_dir)] == ["wandb"]
    (run,) = load_runs(wandb_dir)
    assert run.source == "wandb" and run.name == "mgda-wb"
    assert run.config["aggregator"] == "mgda"
    # Lightning's global step, not W&B's own counter (the val row is W&B step 40).
    assert run.last("val/loss/en") == (39, 2.1)
    assert list(run.by_step) == list(range(40))
    assert not any(k.startswith("_") for k in run.metric_names())


def test_compares_wandb_and_csv(wandb_dir: Path, tmp_path: Path) -> None:
    csv_dir = write_csv_run(tmp_path / "csv", "mean", langs=tuple(LANGS), steps=40)
    out = tmp_path / "r.html"
    assert main([str(csv_dir), str(wandb_dir / "wandb"), "-o", str(out), "-l", "mean"]) == 0
    s = sections(out.read_text())
    assert "Training loss per language — mgda-wb" in s["losses"].titles
    assert "Training loss per language — mean" in s["losses"].titles
    assert s["conflict"].svgs == 4
    # Cosines at steps 0, 10, 20, 30 in both runs: 4 snapshots + bar + 4 frames each.
    assert s["cosine"].svgs == 2 * (4 + 1 + 4)
    assert "2.1000" in " ".join(s["results"].text)
