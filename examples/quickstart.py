"""Quickstart: bucket-level MOO with Lightning on a toy three-language task, in ~30 s on CPU.

    python -m examples.quickstart            # from the repository root

Two CPU processes train a small network on three "languages" with ``BucketMOOStrategy``:
``LanguageBatchSampler`` gives every rank language-homogeneous microbatches, the DDP hook
combines each gradient bucket's per-language gradients with MGDA, ``InterferenceMonitor`` logs
how much the languages conflict, and ``lightning_bmoo.report`` turns the logs into an HTML
report. Each language is a regression task on the same inputs with its own target map (plus
a shared one), so their gradients partly conflict, as languages' do.

The toy data and model are importable (``toy_datasets``, ``toy_loader``, ``ToyModel``): the
code snippets of the documentation use them.
"""

from __future__ import annotations

import argparse
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_bmoo import (
    BucketMOOStrategy,
    InterferenceMonitor,
    LanguageBatchSampler,
    collate_with_language,
)
from lightning_bmoo.callbacks import StepProgressBar
from lightning_bmoo.report import build_report, load_runs

LANGUAGES = ("de", "en", "ru")
DIM = 16


def toy_datasets(n: int = 256, seed: int = 0) -> dict[str, list[dict[str, torch.Tensor]]]:
    """One dataset per language: ``{"x": x, "y": y}`` examples, ``y = x @ (shared + own / 2)``.

    Args:
        n: examples per language.
        seed: seed of the shared map and of the data (each language adds its own name).
    """
    shared = torch.randn(DIM, 1, generator=torch.Generator().manual_seed(seed))
    out = {}
    for lang in LANGUAGES:
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(lang.encode()))
        own = torch.randn(DIM, 1, generator=g)
        x = torch.randn(n, DIM, generator=g)
        y = x @ (shared + 0.5 * own) + 0.1 * torch.randn(n, 1, generator=g)
        out[lang] = [{"x": x[i], "y": y[i]} for i in range(n)]
    return out


def toy_loader(
    slots_per_rank: int,
    *,
    batch_size: int = 16,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
) -> DataLoader:
    """Language-homogeneous batches of :func:`toy_datasets` (``batch["language"]`` is a str).

    ``rank``/``world_size`` default to ``torch.distributed``'s: build it once the process group
    exists, or pass them.
    """
    sampler, dataset = LanguageBatchSampler.from_datasets(
        toy_datasets(seed=seed),
        batch_size,
        language_key="language",
        slots_per_rank=slots_per_rank,
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_with_language)


class ToyModel(pl.LightningModule):
    """A two-layer network trained with the mean squared error of ``batch["y"]``."""

    def __init__(self, hidden: int = 64, lr: float = 0.02) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's mean squared error."""
        return nn.functional.mse_loss(self(batch["x"]), batch["y"])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, batch_size=len(batch["y"]))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class ToyData(pl.LightningDataModule):
    """:func:`toy_loader`, built in ``train_dataloader`` (once the process group exists)."""

    def __init__(self, slots_per_rank: int) -> None:
        super().__init__()
        self.slots_per_rank = slots_per_rank

    def train_dataloader(self) -> DataLoader:
        return toy_loader(self.slots_per_rank)


def main(argv: Sequence[str] | None = None) -> None:
    """Trains, then writes the HTML conflict report next to the CSV logs (rank 0)."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.quickstart",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps")
    parser.add_argument("--devices", type=int, default=2, help="CPU processes")
    parser.add_argument("--aggregator", default="mgda", help="e.g. mean, mgda, pcgrad, cagrad")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="logs and report")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.devices < 1:
        parser.error("--steps and --devices must be >= 1")

    from examples.multilingual.quiet import silence_known_noise

    silence_known_noise()
    K = 3  # microbatches per rank and step: with 2 ranks, 6 slots for 3 languages
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy=BucketMOOStrategy(args.aggregator),
        accumulate_grad_batches=K,
        use_distributed_sampler=False,  # the sampler shards over ranks itself
        max_steps=args.steps,
        logger=CSVLogger(args.out, name="quickstart"),  # a new version_N folder per run
        callbacks=[InterferenceMonitor(log_every_n_steps=5), StepProgressBar("quickstart")],
        log_every_n_steps=5,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    torch.manual_seed(0)
    trainer.fit(ToyModel(), ToyData(K))
    if trainer.is_global_zero:
        log_dir = Path(trainer.logger.log_dir)
        html = log_dir / "report.html"
        html.write_text(build_report(load_runs(log_dir), title="quickstart"), encoding="utf-8")
        print(f"logs: {log_dir}\nconflict report: {html}")


if __name__ == "__main__":
    main()
