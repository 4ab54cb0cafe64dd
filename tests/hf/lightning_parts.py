"""The example's LightningModule over the tiny models, planned token batches, a gradient recorder.

Importable (not local to a test) so that forked and spawned ranks find them.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch

from examples.multilingual.model import MultilingualLM
from lightning_bmoo.callbacks import InterferenceMonitor

from .tiny import tokens


class TinyLM(MultilingualLM):
    """The example's module over a tiny model; lr 0 keeps every step at the initial weights."""

    def __init__(self, model: torch.nn.Module, *, per_language: bool, lr: float = 0.0, **kw: Any):
        super().__init__(model, pad_id=0, per_language=per_language, lr=lr, warmup_steps=0, **kw)

    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)  # two ranks share two cores with other work


def token_batch(language: str, step: int, slot: int) -> dict[str, Any]:
    """The slot's tokens (:func:`tests.hf.tiny.tokens`) with its language: a batch for
    :class:`tests.strategy.models.PlannedData`."""
    return {"input_ids": tokens(language, step, slot), "language": language}


class GradRecorder(pl.Callback):
    """Writes every step's trainable gradients and groups to ``out_dir/grads{rank}.pt``; at the
    end the parameters (``params{rank}.pt``) and the monitor's last metrics and per-group
    cosines, if a monitor ran (``monitor{rank}.pt``)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.steps: list[Any] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        state = trainer.strategy.hook_state
        grads = {
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in pl_module.model.named_parameters()
            if p.requires_grad
        }
        groups = [
            (g.key, [n.removeprefix("model.") for n in g.param_names])
            for g in state.last_step.groups
        ]
        self.steps.append((grads, groups))

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        rank = trainer.global_rank
        torch.save(self.steps, os.path.join(self.out_dir, f"grads{rank}.pt"))
        params = {n: p.detach().clone() for n, p in pl_module.model.named_parameters()}
        torch.save(params, os.path.join(self.out_dir, f"params{rank}.pt"))
        for callback in trainer.callbacks:
            if isinstance(callback, InterferenceMonitor) and callback.last_figures is not None:
                seen = (callback.last_metrics, callback.last_figures.group_cos)
                torch.save(seen, os.path.join(self.out_dir, f"monitor{rank}.pt"))
