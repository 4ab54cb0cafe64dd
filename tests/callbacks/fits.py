"""Importable pieces for the monitor's fit tests (forked ranks need no local classes)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_bmoo.callbacks import InterferenceMonitor
from tests.strategy.models import LanguageData, TinyModel
from tests.trainers import quiet_trainer


class ValModel(TinyModel):
    """TinyModel whose validation_step returns its loss, for per-language validation metrics."""

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.loss(batch)


class Capture(pl.Callback):
    """Per rank: each step's StepStats and the explicit gradient and loss of every local slot.

    Explicit gradients are recomputed from the model and batch at the parameters of the step,
    with torch.autograd.grad (no DDP, no hook). Finishes the W&B run on rank 0 at teardown:
    under fork nothing else would flush it.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.batches: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        names = [n for n, p in pl_module.named_parameters()]
        params = [p for p in pl_module.parameters()]
        slots = []
        for batch in self.batches:
            loss = pl_module.loss(batch)
            grads = torch.autograd.grad(loss, params)
            slots.append(
                {
                    "language": batch["language"],
                    "loss": float(loss),
                    "grads": {n: g.detach().clone() for n, g in zip(names, grads)},
                }
            )
        self.batches = []
        state = trainer.strategy.hook_state
        self.steps.append(
            {
                "global_step": trainer.global_step + 1,  # as logged after the step
                "stats": copy.deepcopy(state.last_step),
                "slots": slots,
                "lr": optimizer.param_groups[0]["lr"],
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        monitor = next(c for c in trainer.callbacks if isinstance(c, InterferenceMonitor))
        record = {
            "steps": self.steps,
            "media_logged": monitor.media_logged,
            "last_metrics": monitor.last_metrics,
            "callback_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }
        torch.save(record, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))

    def teardown(self, trainer, pl_module, stage) -> None:
        if trainer.is_global_zero:
            import wandb

            wandb.finish()


def fit(
    out_dir: Path,
    monitor: InterferenceMonitor,
    *,
    logger: Any = False,
    devices: int = 2,
    model: pl.LightningModule | None = None,
    data: pl.LightningDataModule | None = None,
    strategy: Any = None,
    **trainer_kwargs: Any,
) -> list[dict[str, Any]]:
    """Fits TinyModel with the monitor; returns each rank's Capture record."""
    from lightning_bmoo.strategy import BucketMOOStrategy

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer_kwargs.setdefault("max_steps", 4)
    trainer_kwargs.setdefault("limit_val_batches", 0)
    trainer = quiet_trainer(
        devices=devices,
        strategy=strategy or BucketMOOStrategy("mgda", start_method="fork", bucket_cap_mb=0.0005),
        logger=logger,
        default_root_dir=str(out_dir),
        callbacks=[monitor, Capture(str(out_dir))],
        **trainer_kwargs,
    )
    trainer.fit(model or TinyModel(), datamodule=data or LanguageData())
    return [torch.load(p, weights_only=False) for p in sorted(out_dir.glob("rank*.pt"))]


def task_gradients(step: dict[str, Any], ranks: list[dict[str, Any]] | None = None):
    """Each language's explicit gradient (mean of its slots), by parameter name, and loss."""
    slots = [s for r in ranks for s in r["steps"][step]["slots"]] if ranks else step["slots"]
    grads: dict[str, list[dict[str, torch.Tensor]]] = {}
    losses: dict[str, list[float]] = {}
    for slot in slots:
        grads.setdefault(slot["language"], []).append(slot["grads"])
        losses.setdefault(slot["language"], []).append(slot["loss"])
    mean = {
        lang: {n: torch.stack([g[n] for g in gs]).double().mean(0) for n in gs[0]}
        for lang, gs in grads.items()
    }
    return mean, {lang: sum(v) / len(v) for lang, v in losses.items()}


def flat(grads: dict[str, torch.Tensor], names: list[str] | None = None) -> torch.Tensor:
    return torch.cat([grads[n].flatten() for n in (names or sorted(grads))])
