"""A progress bar that counts optimizer steps, with each language's recent training loss."""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override

from ..strategy.language import batch_language


class StepProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, counting optimizer steps instead of microbatches.

    Under gradient accumulation (``accumulate_grad_batches=K``, which every bucket-MOO run with
    several slots per rank uses) Lightning's bar counts the K microbatches of each step, so
    with ``max_steps`` it reaches 100 % long before the end or shows ``?`` as its total. This
    bar's total is the fit's optimizer steps (``trainer.estimated_stepping_batches``:
    ``max_steps``, or ``max_epochs`` times the steps of an epoch, whichever ends the fit first)
    and its position is ``trainer.global_step``: one bar from the first step to the last, over
    all epochs. Validation keeps Lightning's bar, in batches.

    When batches carry a language (read with the strategy's ``language_of``, or from
    ``batch["language"]``), the postfix also shows each language's training loss averaged over
    its last ``loss_window`` microbatches on this rank (rank 0 draws the bar; over the steps the
    sampler deals every language to it). A batch without a language only leaves that part out.

    Args:
        description: the bar's label, e.g. ``"fine-tuning"``.
        refresh_rate: redraw every that many optimizer steps (and at the last).
        process_position: see :class:`~lightning.pytorch.callbacks.TQDMProgressBar`.
        language_losses: show the per-language training loss.
        loss_window: microbatches per language in that average.

    Raises:
        ValueError: if ``refresh_rate`` or ``loss_window`` is below 1.
    """

    def __init__(
        self,
        description: str = "Training",
        *,
        refresh_rate: int = 1,
        process_position: int = 0,
        language_losses: bool = True,
        loss_window: int = 20,
    ) -> None:
        for name, value in (("refresh_rate", refresh_rate), ("loss_window", loss_window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
        super().__init__(refresh_rate=refresh_rate, process_position=process_position)
        self.description = description
        self.language_losses = language_losses
        self.loss_window = loss_window
        self._losses: dict[str, deque[float]] = {}
        self._shown_step = -1

    @property
    def language_loss(self) -> dict[str, float]:
        """Each language's mean training loss over its last ``loss_window`` microbatches."""
        return {lang: sum(v) / len(v) for lang, v in sorted(self._losses.items()) if v}

    @override
    def init_train_tqdm(self) -> Tqdm:
        total = self.trainer.estimated_stepping_batches
        return Tqdm(
            desc=self.description,
            total=None if math.isinf(total) else int(total),
            # A resumed fit starts where its checkpoint left off; the rate counts from there.
            initial=self.trainer.global_step,
            unit="step",
            position=2 * self.process_position,
            disable=self.is_disabled,
            leave=True,
            dynamic_ncols=True,
            file=sys.stdout,
            smoothing=0,
            bar_format=self.BAR_FORMAT,
        )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self._losses = {}
        self._shown_step = -1
        self._show(trainer, pl_module, force=True)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        several = trainer.current_epoch > 0 or (trainer.max_epochs or 0) > 1
        epoch = f" (epoch {trainer.current_epoch})" if several else ""
        self.train_progress_bar.set_description(f"{self.description}{epoch}")

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.language_losses:
            self._record(trainer, pl_module, outputs, batch)
        self._show(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show(trainer, pl_module, force=True)

    @override
    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version: the bar has no room to spare
        losses = self.language_loss
        if losses:
            metrics["loss by language"] = " ".join(f"{k} {v:.3g}" for k, v in losses.items())
        return metrics

    def _show(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, force: bool = False
    ) -> None:
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar.disable or (step == self._shown_step and not force):
            return
        due = step % self.refresh_rate == 0 or step == bar.total
        if not (due or force):
            return
        self._shown_step = step
        bar.n = step
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()

    def _record(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        try:
            language_of = getattr(trainer.strategy, "language_of", None)
            language = language_of(batch) if language_of else batch_language(batch)
        except ValueError:
            return  # no language here: the bar shows the rest
        value = float(loss.detach())
        if pl_module.automatic_optimization:
            value *= trainer.accumulate_grad_batches  # Lightning divided it by K
        window = self._losses.setdefault(language, deque(maxlen=self.loss_window))
        window.append(value)
