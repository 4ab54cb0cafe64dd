"""Step time of a Lightning fit with the InterferenceMonitor, against the same fit without it.

Two forked gloo ranks (one thread each) train a small transformer LM with
``BucketMOOStrategy`` (one language per rank and step) and a ``CSVLogger``; one fit per
configuration: no monitor, then the monitor at each logging interval, then no monitor again
(the baseline is the mean of both, to absorb the drift of a busy machine). A callback times
every optimizer step on rank 0 after the warm-up steps. Printed per configuration: mean and
median step time and the ratio of the mean to the baseline's (the mean includes the logging
steps, whose cost the median hides).

    python benchmarks/monitor_overhead.py [--steps 60] [--every 1 10 50] [--granularity bucket]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

import lightning.pytorch as pl
import torch
import torch._dynamo  # DDP imports it lazily: import it once, before forking
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from lightning_bmoo import LanguageBatchSampler, collate_with_language
from lightning_bmoo.callbacks import InterferenceMonitor
from lightning_bmoo.strategy import BucketMOOStrategy

VOCAB, WIDTH, LAYERS, HEADS, SEQ, BATCH = 4000, 256, 4, 4, 64, 8
LANGUAGES = ("de", "en", "fr", "ru")


class LM(pl.LightningModule):
    """A pre-norm causal transformer LM of about 5M parameters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        layer = nn.TransformerEncoderLayer(
            WIDTH, HEADS, 4 * WIDTH, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.head = nn.Linear(WIDTH, VOCAB)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(SEQ))

    def setup(self, stage: str) -> None:
        torch.set_num_threads(1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        tokens = batch["tokens"]
        logits = self.head(self.blocks(self.embed(tokens), mask=self.mask, is_causal=True))
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].reshape(-1)
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Data(pl.LightningDataModule):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        datasets = {
            lang: [{"tokens": torch.randint(VOCAB, (SEQ,), generator=g)} for _ in range(64)]
            for lang in LANGUAGES
        }
        sampler, dataset = LanguageBatchSampler.from_datasets(
            datasets,
            BATCH,
            language_key="language",
            probabilities="uniform",
            steps_per_epoch=self.steps,
        )
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_with_language)


class TimedMonitor(InterferenceMonitor):
    """The monitor, timing its own hooks: a direct measure, immune to the machine's drift."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = 0.0

    def on_before_optimizer_step(self, *args: Any) -> None:
        start = time.perf_counter()
        super().on_before_optimizer_step(*args)
        self.seconds += time.perf_counter() - start

    def on_train_batch_end(self, *args: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args)
        self.seconds += time.perf_counter() - start


class StepTimer(pl.Callback):
    """Writes rank 0's per-step wall times (after ``warmup`` steps) to ``path``."""

    def __init__(self, path: str, warmup: int) -> None:
        self.path, self.warmup = path, warmup
        self.times: list[float] = []
        self.start = 0.0
        self.monitor_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The monitor runs before this callback in the list: its work is inside the step.
        if trainer.global_step == self.warmup:
            self.monitor_start = _monitor_seconds(trainer)
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self.start)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            inside = _monitor_seconds(trainer) - self.monitor_start
            torch.save((self.times, inside / max(len(self.times), 1)), self.path)


def _monitor_seconds(trainer: pl.Trainer) -> float:
    return sum(c.seconds for c in trainer.callbacks if isinstance(c, TimedMonitor))


def run(
    every: int | None, steps: int, warmup: int, granularity: str, out: str
) -> tuple[list[float], float]:
    path = os.path.join(out, f"times-{every}.pt")
    callbacks: list[pl.Callback] = [StepTimer(path, warmup)]
    if every is not None:
        callbacks.insert(0, TimedMonitor(log_every_n_steps=every))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=BucketMOOStrategy("mgda", granularity=granularity, start_method="fork"),
        max_steps=steps + warmup,
        logger=CSVLogger(out, name=f"every-{every}"),
        log_every_n_steps=10_000,  # Lightning's own logging off: only the monitor's cost counts
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    trainer.fit(LM(), datamodule=Data(steps + warmup))
    return torch.load(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--granularity", default="bucket", choices=["bucket", "parameter"])
    args = parser.parse_args()
    results: list[tuple[str, list[float], float]] = []
    with tempfile.TemporaryDirectory() as out:
        for every in [None, *args.every, None]:
            times, inside = run(every, args.steps, args.warmup, args.granularity, out)
            name = "no monitor" if every is None else f"every {every}"
            results.append((name, times, inside))
    base = statistics.mean(statistics.mean(t) for name, t, _ in results if name == "no monitor")
    print(f"\n{args.steps} steps, 2 ranks x 1 thread, granularity {args.granularity}")
    print(
        f"{'configuration':<14} {'mean ms':>9} {'median ms':>10} {'mean / base':>12} "
        f"{'monitor ms/step':>16} {'(base + monitor) / base':>24}"
    )
    for name, times, inside in results:
        mean, median = statistics.mean(times), statistics.median(times)
        print(
            f"{name:<14} {1000 * mean:>9.1f} {1000 * median:>10.1f} {mean / base:>12.3f} "
            f"{1000 * inside:>16.2f} {(base + inside) / base:>24.4f}"
        )


if __name__ == "__main__":
    main()
