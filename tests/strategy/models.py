"""Importable model, data and callback for the strategy tests (fork needs no local classes)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from functools import cache
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, default_collate

from lightning_bmoo.data import LanguageBatchSampler, collate_with_language

LANGUAGES = ("de", "en", "fr", "ru")


@cache
def _language_examples(language: str, n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(zlib.crc32(language.encode()))
    mapping = torch.randn(8, 4, generator=g)  # each language its own map: their gradients conflict
    x = torch.randn(n, 8, generator=g)
    y = x @ mapping + 0.1 * torch.randn(n, 4, generator=g)
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def language_datasets(n: int = 32) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Synthetic regression data, one dataset of dict examples per language."""
    return {language: _language_examples(language, n) for language in LANGUAGES}


def language_of(batch: dict[str, Any]) -> str:
    """A module-level ``language_fn``: spawned ranks unpickle it by name."""
    return batch["language"]


class LanguageData(pl.LightningDataModule):
    """Language-homogeneous batches from a LanguageBatchSampler (built once ranks are known).

    ``mixed=True`` serves shuffled mixed-language batches instead; ``plain_batches=n`` a plain
    single-language DataLoader of ``n`` batches.
    """

    def __init__(
        self,
        batch_size: int = 4,
        slots_per_rank: int = 1,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        mixed: bool = False,
        plain_batches: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.slots_per_rank = slots_per_rank
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.mixed = mixed
        self.plain_batches = plain_batches
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        datasets = language_datasets()
        if self.mixed:
            # Round-robin over languages: every batch mixes them.
            examples = [
                {**datasets[lang][i], "language": lang}
                for i in range(len(datasets[LANGUAGES[0]]))
                for lang in LANGUAGES
            ]
            return DataLoader(examples, batch_size=self.batch_size, collate_fn=default_collate)
        if self.plain_batches is not None:
            examples = [{**e, "language": "de"} for e in datasets["de"]]
            examples = examples[: self.plain_batches * self.batch_size]
            return DataLoader(
                examples, batch_size=self.batch_size, collate_fn=collate_with_language
            )
        sampler, dataset = LanguageBatchSampler.from_datasets(
            datasets,
            self.batch_size,
            language_key="language",
            probabilities="uniform",
            slots_per_rank=self.slots_per_rank,
            steps_per_epoch=self.steps_per_epoch,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_with_language,
            num_workers=self.num_workers,
            multiprocessing_context="fork" if self.num_workers else None,
        )

    def val_dataloader(self) -> DataLoader:
        examples = [{**e, "language": "en"} for e in language_datasets()["en"][:8]]
        return DataLoader(ConcatDataset([examples]), batch_size=4, collate_fn=collate_with_language)


class MLP(nn.Module):
    """Registered in the opposite order of use, so DDP rebuilds its buckets after step 0."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 4)
        self.hidden = nn.Linear(16, 16)
        self.embed = nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(torch.tanh(self.embed(x)))))


class TinyModel(pl.LightningModule):
    """MSE regression; ``inf_at=(step, language)`` makes that slot's loss infinite."""

    def __init__(
        self, lr: float = 0.1, momentum: float = 0.0, inf_at: tuple[int, str] | None = None
    ) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = MLP()
        self.lr = lr
        self.momentum = momentum
        self.inf_at = inf_at

    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)  # two ranks share two cores with other work

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        loss = functional.mse_loss(self.net(batch["x"]), batch["y"])
        if self.inf_at == (self.global_step, batch["language"]):
            loss = loss * float("inf")
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.loss(batch)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.log("val_loss", self.loss(batch), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum)


class ManualModel(TinyModel):
    """Manual optimization: ``slots`` backward passes per optimizer step."""

    def __init__(self, slots: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.slots = slots

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        optimizer = self.optimizers()
        self.manual_backward(self.loss(batch) / self.slots)
        if (batch_idx + 1) % self.slots == 0:
            optimizer.step()
            optimizer.zero_grad()


class Recorder(pl.Callback):
    """Writes what each rank saw to ``out_dir/rank{r}.pt`` at the end of training."""

    def __init__(self, out_dir: str, snapshots: bool = False) -> None:
        self.out_dir = out_dir
        self.snapshots = snapshots
        self.layouts: list[list[str]] = []
        self.expected: list[list[str]] = []
        self.groups: list[list[str]] = []
        self.params: list[list[torch.Tensor]] = []
        self.scales: list[float] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        state = getattr(trainer.strategy, "hook_state", None)
        if state is None or state.last_step is None:
            return
        self.layouts.append(state.last_step.slots)
        self.groups.append([group.key for group in state.last_step.groups])
        sampler = getattr(trainer.train_dataloader, "batch_sampler", None)
        if isinstance(sampler, LanguageBatchSampler):
            step = trainer.global_step - trainer.current_epoch * sampler.steps_per_epoch
            self.expected.append(sampler.step_slots(step))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if self.snapshots:
            self.params.append([p.detach().clone() for p in pl_module.parameters()])
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            self.scales.append(scaler.get_scale() if scaler is not None else 1.0)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        model = trainer.strategy.model
        state = getattr(trainer.strategy, "hook_state", None)
        record = {
            "params": [p.detach().clone() for p in pl_module.parameters()],
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "comm_hook": (
                model._get_ddp_logging_data().get("comm_hook")
                if isinstance(model, DistributedDataParallel)
                else None
            ),
            "hook_step": state.step if state is not None else None,
            "slots_per_rank": state.slots_per_rank if state is not None else None,
            "nonfinite": state.nonfinite if state is not None else None,
            "layouts": self.layouts,
            "expected": self.expected,
            "groups": self.groups,
            "snapshots": self.params,
            "scales": self.scales,
        }
        torch.save(record, os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"))


class HeadsModel(pl.LightningModule):
    """One head per language (tests/comm/heads.py) trained at lr 0: every step's gradient
    is taken at the initial weights, so it can be compared with a one-process reference."""

    def __init__(self) -> None:
        super().__init__()
        from ..comm.heads import Heads

        self.net = Heads()

    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return functional.mse_loss(self.net(batch["x"], batch["language"]), batch["y"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def regression_batch(language: str, step: int, slot: int) -> dict[str, Any]:
    """The workload's regression batch of a slot, as a dict with its language."""
    from ..comm.workload import batch

    x, y = batch(language, step, slot)
    return {"x": x, "y": y, "language": language}


class PlannedData(pl.LightningDataModule):
    """Serves each rank its slots of a fixed list of step layouts (``W * K`` languages each),
    each slot's batch made by ``make_batch(language, step, slot)``."""

    def __init__(
        self,
        layouts: list[list[str]],
        slots_per_rank: int,
        make_batch: Callable[[str, int, int], dict[str, Any]] = regression_batch,
    ) -> None:
        super().__init__()
        self.layouts, self.slots_per_rank, self.make_batch = layouts, slots_per_rank, make_batch

    def train_dataloader(self) -> DataLoader:
        K, rank = self.slots_per_rank, self.trainer.global_rank
        batches = [
            self.make_batch(layout[rank * K + k], step, k)
            for step, layout in enumerate(self.layouts)
            for k in range(K)
        ]
        return DataLoader(batches, batch_size=None)


class GradRecorder(pl.Callback):
    """Writes every step's gradients and groups to ``out_dir/grads{rank}.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.steps: list[Any] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        state = trainer.strategy.hook_state
        grads = {
            n: None if p.grad is None else p.grad.detach().clone()
            for n, p in pl_module.net.named_parameters()
        }
        groups = [
            (g.key, [n.removeprefix("net.") for n in g.param_names]) for g in state.last_step.groups
        ]
        self.steps.append((grads, groups))

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        torch.save(self.steps, os.path.join(self.out_dir, f"grads{trainer.global_rank}.pt"))
