"""A real offline W&B run (written by Lightning's WandbLogger) through the report."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_bmoo.report import load_runs, read_run
from lightning_bmoo.report.cli import main
from lightning_bmoo.report.sources import find_runs

from .dom import sections
from .synthetic import write_csv_run

LANGS = ["de", "en", "fr"]


def test_reads_offline_run(logged_twice: tuple[Path, Path]) -> None:
    run_dir, _ = logged_twice
    assert [source for source, _ in find_runs(run_dir.parent)] == ["wandb"]
    (run,) = load_runs(run_dir.parent)
    assert run.source == "wandb" and run.name == "mgda-wb"
    assert run.config["aggregator"] == "mgda"
    assert run.finished is True and run.problem is None
    # Lightning's global step, not W&B's own counter (the val row is W&B step 40).
    assert run.last("val/loss/en") == (39, 2.1)
    assert list(run.by_step) == list(range(40))
    assert not any(k.startswith("_") for k in run.metric_names())
    assert read_run(run_dir).name == "mgda-wb"


def test_compares_wandb_and_csv(
    logged_twice: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir, _ = logged_twice
    csv_dir = write_csv_run(tmp_path / "csv", "mean", langs=tuple(LANGS), steps=40)
    out = tmp_path / "r.html"
    assert main([str(csv_dir), str(run_dir.parent), "-o", str(out), "-l", "mean"]) == 0
    s = sections(out.read_text())
    assert "Training loss per language — mgda-wb" in s["losses"].titles
    assert "Training loss per language — mean" in s["losses"].titles
    assert s["conflict"].svgs == 4
    # Cosines at steps 0, 10, 20, 30 in both runs: 4 snapshots + bar + 4 frames each.
    assert s["cosine"].svgs == 2 * (4 + 1 + 4)
    assert "2.1000" in " ".join(s["results"].text)
    assert "note" not in capsys.readouterr().out  # two different runs: both shown


def test_a_run_logged_to_csv_and_wandb_is_shown_once(
    logged_twice: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir, csv_dir = logged_twice
    out = tmp_path / "r.html"
    assert main([str(run_dir.parents[1]), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{csv_dir} holds the same run as {run_dir}; shown once" in printed
    s = sections(out.read_text())
    overview = " ".join("".join(s["overview"].text).split())
    assert s["overview"].classes["run"] == 1 and "wandb" in overview
    assert f"the same run also in {csv_dir}" in overview
    assert s["losses"].titles.count("Training loss per language") == 1  # one run, no suffix
