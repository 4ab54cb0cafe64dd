"""StepProgressBar: total and position in optimizer steps, per-language losses, never a crash."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader

from lightning_bmoo.callbacks import StepProgressBar

LANGUAGES = ("de", "en", "ru")


class Regression(pl.LightningModule):
    """One linear layer; each language's batches have a different target scale."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        torch.nn.init.zeros_(self.layer.bias)  # inputs are zeros: the prediction is 0

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.layer(batch["x"]), batch["y"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)  # losses stay put: easy to check


def batches(n: int, with_language: bool = True) -> list[dict[str, Any]]:
    """``n`` batches, languages round-robin; language ``i``'s loss is exactly ``(i + 1) ** 2``."""
    out = []
    for b in range(n):
        i = b % len(LANGUAGES)
        batch = {"x": torch.zeros(2, 4), "y": torch.full((2, 1), float(i + 1))}
        if with_language:
            batch["language"] = LANGUAGES[i]
        out.append(batch)
    return out


class Probe(pl.Callback):
    """Records the train bar's (position, total) after every microbatch and at the end."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int | None]] = []
        self.final: tuple[int, int | None] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = trainer.progress_bar_callback.train_progress_bar
        self.seen.append((bar.n, bar.total))

    def on_train_end(self, trainer, pl_module) -> None:
        bar = trainer.progress_bar_callback.train_progress_bar
        self.final = (bar.n, bar.total)


def fit(bar: TQDMProgressBar, n_batches: int, *, with_language: bool = True, **kwargs) -> Probe:
    probe = Probe()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar, probe],
        **kwargs,
    )
    # Regression's loss needs no reduction over the batch list: batch_size=None keeps dicts.
    loader = DataLoader(batches(n_batches, with_language), batch_size=None)
    trainer.fit(Regression(), loader)
    assert trainer.progress_bar_callback is bar
    return probe


def test_with_max_steps_the_bar_counts_optimizer_steps_to_max_steps():
    probe = fit(StepProgressBar(), 100, accumulate_grad_batches=3, max_steps=7)
    assert {total for _, total in probe.seen} == {7}
    # After microbatch i (1-based) the optimizer has stepped floor(i / 3) times.
    assert [n for n, _ in probe.seen] == [i // 3 for i in range(1, 22)]
    assert probe.final == (7, 7)


def test_lightnings_own_bar_counts_microbatches_instead():
    # What StepProgressBar fixes: Lightning's bar counts microbatches against max_steps, so it
    # shows 7/7 (100 %) after a third of the run, then counts on past its total (tqdm shows "?").
    probe = fit(TQDMProgressBar(), 100, accumulate_grad_batches=3, max_steps=7)
    assert probe.seen[6] == (7, 7)
    assert probe.final == (21, 7)


def test_with_epochs_one_bar_spans_all_epochs_in_optimizer_steps():
    # 10 microbatches per epoch at K = 3: three full steps and one of the last microbatch.
    probe = fit(StepProgressBar(), 10, accumulate_grad_batches=3, max_epochs=2)
    assert {total for _, total in probe.seen} == {8}
    positions = [n for n, _ in probe.seen]
    assert positions[:10] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 4]
    assert positions == sorted(positions)
    assert probe.final == (8, 8)


def test_refresh_rate_counts_steps_and_the_last_step_always_shows():
    probe = fit(StepProgressBar(refresh_rate=4), 100, accumulate_grad_batches=2, max_steps=10)
    assert {n for n, _ in probe.seen} == {0, 4, 8, 10}


def test_per_language_losses_are_shown_undivided_by_accumulation():
    bar = StepProgressBar(loss_window=5)
    fit(bar, 100, accumulate_grad_batches=3, max_steps=5)
    # The loss Lightning hands callbacks is divided by K; the bar shows the microbatch's own.
    expected = {lang: float((i + 1) ** 2) for i, lang in enumerate(LANGUAGES)}
    assert bar.language_loss == pytest.approx(expected)
    postfix = bar.train_progress_bar.postfix
    assert "loss by language=de 1 en 4 ru 9" in postfix


def test_batches_without_a_language_only_leave_the_losses_out():
    bar = StepProgressBar()
    probe = fit(bar, 20, with_language=False, accumulate_grad_batches=2, max_steps=4)
    assert probe.final == (4, 4)
    assert bar.language_loss == {}


def test_a_fit_without_a_step_or_epoch_limit_has_no_total_but_counts_steps():
    probe = fit(
        StepProgressBar(), 6, accumulate_grad_batches=2, max_epochs=-1, max_time={"seconds": 1}
    )
    assert {total for _, total in probe.seen} == {None}
    assert probe.final[0] == len(probe.seen) // 2 > 0


@pytest.mark.parametrize("kwargs", [{"refresh_rate": 0}, {"loss_window": 0}, {"loss_window": 1.5}])
def test_bad_arguments_name_the_problem(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
        StepProgressBar(**kwargs)
