"""Two ranks, two slots each, CSVLogger: interval means, synced losses, no media anywhere."""

from __future__ import annotations

import csv

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_bmoo.callbacks import InterferenceMonitor
from tests.strategy.models import LanguageData

from .fits import fit, flat, task_gradients

P = "interference/"


def _cos(u: torch.Tensor, v: torch.Tensor) -> float:
    return float(u @ v / (u.norm() * v.norm()))


def test_csv_logs_interval_means_synced_over_ranks(tmp_path):
    logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    ranks = fit(
        tmp_path,
        InterferenceMonitor(log_every_n_steps=2),
        logger=logger,
        data=LanguageData(slots_per_rank=2),
        accumulate_grad_batches=2,
    )
    (path,) = tmp_path.glob("csv/version_*/metrics.csv")
    with path.open() as f:
        rows = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    logged = {int(r["step"]): r for r in rows if f"{P}cos_min" in r}
    assert sorted(logged) == [2, 4]
    for end in (2, 4):
        interval = [end - 2, end - 1]  # step indices averaged into this row
        row = logged[end]
        cos: dict[str, list[float]] = {}
        losses: dict[str, list[float]] = {}
        for index in interval:
            grads, _ = task_gradients(index, ranks)
            assert len(grads) == 4  # 2 ranks x 2 slots, four languages per step
            langs = sorted(grads)
            for i, a in enumerate(langs):
                for b in langs[i + 1 :]:
                    cos.setdefault(f"{a}|{b}", []).append(_cos(flat(grads[a]), flat(grads[b])))
            for r in ranks:
                for slot in r["steps"][index]["slots"]:
                    losses.setdefault(slot["language"], []).append(slot["loss"])
        for pair, values in cos.items():
            assert float(row[f"{P}cos/{pair}"]) == pytest.approx(sum(values) / 2, rel=1e-5)
        # Loss: the mean over the interval's slots of every rank (a synced MeanMetric).
        for lang, values in losses.items():
            expected = sum(values) / len(values)
            assert float(row[f"{P}loss/{lang}"]) == pytest.approx(expected, rel=1e-5)
    # Both ranks computed the same synced metrics; neither logged media without W&B.
    assert ranks[0]["last_metrics"] == ranks[1]["last_metrics"]
    assert ranks[0]["last_metrics"][f"{P}cos_min"] == pytest.approx(
        float(logged[4][f"{P}cos_min"]), rel=1e-6
    )
    assert ranks[0]["media_logged"] == ranks[1]["media_logged"] == 0
    assert f"{P}cos_min" in ranks[1]["callback_metrics"]
