"""Runs a Trainer fit on forked CPU ranks and collects what each rank recorded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch._dynamo  # DDP imports it lazily: seconds per forked rank otherwise

from ..trainers import quiet_trainer
from .models import LanguageData, Recorder, TinyModel


def fit(
    out_dir: Path,
    strategy: Any,
    *,
    devices: int = 2,
    model: pl.LightningModule | None = None,
    data: pl.LightningDataModule | None = None,
    callbacks: list[pl.Callback] | None = None,
    ckpt_path: str | None = None,
    snapshots: bool = False,
    **trainer_kwargs: Any,
) -> list[dict[str, Any]]:
    """Fits ``model`` on ``data`` and returns each rank's :class:`Recorder` record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rank*.pt"):
        old.unlink()
    trainer_kwargs.setdefault("max_steps", 4)
    trainer_kwargs.setdefault("enable_checkpointing", False)
    trainer = quiet_trainer(
        devices=devices,
        strategy=strategy,
        limit_val_batches=0,
        default_root_dir=str(out_dir),
        callbacks=[Recorder(str(out_dir), snapshots=snapshots), *(callbacks or [])],
        **trainer_kwargs,
    )
    trainer.fit(model or TinyModel(), datamodule=data or LanguageData(), ckpt_path=ckpt_path)
    ranks = sorted(out_dir.glob("rank*.pt"))
    assert len(ranks) == devices, f"expected {devices} records, found {os.listdir(out_dir)}"
    return [torch.load(path, weights_only=False) for path in ranks]


def assert_params_equal(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 0.0) -> None:
    assert len(a) == len(b)
    for p, q in zip(a, b):
        if atol == 0.0:
            assert torch.equal(p, q), (p - q).abs().max()
        else:
            torch.testing.assert_close(p, q, atol=atol, rtol=0.0)
