"""Step time of a Lightning fit with the InterferenceMonitor, against the same fit without it.

Two forked gloo ranks (one thread each) train a small transformer LM with
``BucketMOOStrategy`` (``--slots`` microbatches per rank, ``--languages`` languages, each step
covering min(T, 2 K) of them) and a ``CSVLogger``; one fit per configuration: no monitor,
then the monitor at each logging interval, then no monitor again (the baseline is the mean
of both, to absorb the drift of a busy machine). A callback times every optimizer step on
rank 0 after the warm-up steps, and the monitor times its own hooks. Printed per
configuration: mean and median step time, the ratio of the mean to the baseline's (the mean
includes the logging steps, whose cost the median hides), the monitor's own time per step,
and per logging step.

Then what a W&B logger adds on rank 0 per logging step: the heatmaps drawn and encoded as
``wandb.Image`` does, for the same languages and the LM's number of groups (the fits log to
CSV: an offline W&B run under forked ranks measures W&B's own file writer too).

    python benchmarks/monitor_overhead.py [--steps 60] [--every 1 10 50] [--granularity bucket]
        [--languages 4] [--slots 1]
"""

from __future__ import annotations

import argparse
import math
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
    def __init__(self, steps: int, languages: int, slots: int) -> None:
        super().__init__()
        self.steps, self.languages, self.slots = steps, languages, slots

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        datasets = {
            f"x{t:02d}": [{"tokens": torch.randint(VOCAB, (SEQ,), generator=g)} for _ in range(64)]
            for t in range(self.languages)
        }
        sampler, dataset = LanguageBatchSampler.from_datasets(
            datasets,
            BATCH,
            language_key="language",
            probabilities="uniform",
            slots_per_rank=self.slots,
            steps_per_epoch=self.steps,
        )
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_with_language)


class TimedMonitor(InterferenceMonitor):
    """The monitor, timing its own hooks: a direct measure, immune to the machine's drift."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seconds = 0.0
        self.log_seconds: list[float] = []  # each logging step's share (inside on_train_batch_end)

    def _log(self, trainer: pl.Trainer) -> None:
        start = time.perf_counter()
        super()._log(trainer)
        self.log_seconds.append(time.perf_counter() - start)

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
        self.start: float | None = None
        self.stepped = 0
        self.monitor_start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:  # the step's first microbatch
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The monitor runs before this callback in the list: its work is inside the step.
        if trainer.global_step == self.stepped:
            return  # within an accumulated step
        self.stepped = trainer.global_step
        if trainer.global_step == self.warmup:
            self.monitor_start = _monitor_seconds(trainer)
        if trainer.global_step > self.warmup:
            self.times.append(time.perf_counter() - self.start)
        self.start = None

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning's fork launcher joins the ranks before reading rank 0's result pipe: at
        # T = 16 the monitor's ~460 callback metrics pickle to more than the pipe's 64 KB and
        # the fit never returns. This benchmark reads none of them.
        trainer.callback_metrics.clear()
        if trainer.is_global_zero:
            inside = _monitor_seconds(trainer) - self.monitor_start
            logs = [
                s for c in trainer.callbacks if isinstance(c, TimedMonitor) for s in c.log_seconds
            ]
            per_log = statistics.median(logs) if logs else math.nan
            groups = len(trainer.strategy.hook_state.last_step.groups)
            torch.save((self.times, inside / max(len(self.times), 1), per_log, groups), self.path)


def _monitor_seconds(trainer: pl.Trainer) -> float:
    return sum(c.seconds for c in trainer.callbacks if isinstance(c, TimedMonitor))


def run(
    every: int | None, args: argparse.Namespace, out: str
) -> tuple[list[float], float, float, int]:
    steps, warmup = args.steps, args.warmup
    path = os.path.join(out, f"times-{every}.pt")
    callbacks: list[pl.Callback] = [StepTimer(path, warmup)]
    if every is not None:
        callbacks.insert(0, TimedMonitor(log_every_n_steps=every))
    logger = CSVLogger(out, name=f"every-{every}")
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=BucketMOOStrategy("mgda", granularity=args.granularity, start_method="fork"),
        max_steps=steps + warmup,
        accumulate_grad_batches=args.slots,
        logger=logger,
        log_every_n_steps=10_000,  # Lightning's own logging off: only the monitor's cost counts
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
    )
    trainer.fit(LM(), datamodule=Data(steps + warmup, args.languages, args.slots))
    return torch.load(path)


def panel_seconds(languages: int, groups: int, repeats: int = 3) -> float:
    """Median seconds to draw the W&B heatmaps of ``languages`` and encode them as PNG."""
    import io

    from lightning_bmoo.callbacks import wandb_panels
    from lightning_bmoo.callbacks.figures import interference
    from lightning_bmoo.comm.stats import GroupStats, StepStats

    g = torch.Generator().manual_seed(0)
    tasks = [f"x{t:02d}" for t in range(languages)]
    stats = StepStats(step=0, slots=tasks, tasks=tasks)
    for k in range(groups):
        rows = torch.randn(languages, 64, generator=g, dtype=torch.float64)
        gram = rows @ rows.T
        weights = torch.full((languages,), 1.0 / languages, dtype=torch.float64)
        active = torch.ones(languages, dtype=torch.bool)
        stats.groups.append(GroupStats(f"group{k}", 64, (gram + gram.T) / 2, active, weights))
    fig = interference(stats)
    cos = {(a, b): float(fig.cos[i, j]) for i, a in enumerate(tasks) for j, b in enumerate(tasks)}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        images = wandb_panels.dashboard_heatmaps(cos, cos, tasks, fig)
        for image in images.values():
            image.savefig(io.BytesIO(), format="png")  # what wandb.Image(figure) does
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per fit")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--every", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--granularity", default="bucket", choices=["bucket", "parameter"])
    parser.add_argument("--languages", type=int, default=4, help="T: languages in the data")
    parser.add_argument("--slots", type=int, default=1, help="K: microbatches per rank")
    args = parser.parse_args()
    results: list[tuple[str, int | None, list[float], float, float]] = []
    with tempfile.TemporaryDirectory() as out:
        for every in [None, *args.every, None]:
            times, inside, per_log, groups = run(every, args, out)
            name = "no monitor" if every is None else f"every {every}"
            results.append((name, every, times, inside, per_log))
    base = statistics.mean(statistics.mean(t) for _, e, t, _, _ in results if e is None)
    print(
        f"\n{args.steps} steps, 2 ranks x 1 thread, K = {args.slots}, {args.languages} "
        f"languages (min(T, 2K) a step), granularity {args.granularity}"
    )
    print(
        f"{'configuration':<14} {'mean ms':>9} {'median ms':>10} {'mean / base':>12} "
        f"{'monitor ms/step':>16} {'(base + monitor) / base':>24} {'ms per log':>11}"
    )
    for name, _, times, inside, per_log in results:
        mean, median = statistics.mean(times), statistics.median(times)
        print(
            f"{name:<14} {1000 * mean:>9.1f} {1000 * median:>10.1f} {mean / base:>12.3f} "
            f"{1000 * inside:>16.2f} {(base + inside) / base:>24.4f} {1000 * per_log:>11.1f}"
        )
    T = min(args.languages, 2 * args.slots)
    panels = panel_seconds(T, groups)
    print(
        f"\nW&B heatmaps per logging step, {T} languages, {groups} groups: "
        f"{1000 * panels:.0f} ms, {panels / base:.2f} steps of the baseline"
    )


if __name__ == "__main__":
    main()
