"""Synthetic run logs shaped like what InterferenceMonitor and the example module log."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_bmoo import vocabulary as vocab

P = vocab.MONITOR_PREFIX


def metrics_at(step: int, langs: list[str], rng: random.Random, conflict: float) -> dict:
    """One training step's scalars; matrices every 10 steps, as a monitor with an interval."""
    m: dict[str, float] = {"train/loss": 5.0 * math.exp(-step / 80) + 1.0 + rng.gauss(0, 0.05)}
    for i, lang in enumerate(langs):
        m[f"{P}loss/{lang}"] = 5.0 * math.exp(-step / (60 + 20 * i)) + 1.0 + rng.gauss(0, 0.05)
        m[f"{P}grad_norm/{lang}"] = 2.0 + i + rng.random()
        m[f"{P}weight/{lang}"] = 1 / len(langs) + 0.05 * math.sin(step / 20 + i)
        m[f"{P}weight_std/{lang}"] = 0.02 + 0.01 * rng.random()
        m[f"{P}gain/{lang}"] = 0.1 * math.exp(-step / 100) + 0.01 * rng.gauss(0, 1)
        m[f"{P}gain_mean/{lang}"] = 0.08 * math.exp(-step / 100)
    m[f"{P}conflict_rate"] = conflict * (0.5 + 0.5 * math.exp(-step / 150)) + 0.02 * rng.random()
    m[f"{P}conflict_rate_weighted"] = m[f"{P}conflict_rate"] * 0.8
    m[f"{P}update_ratio"] = 1e-3 * math.exp(-step / 200)
    m[f"{P}length_scale"] = 1.0
    m[f"{P}fallbacks"] = float(step % 50 == 0)
    m[f"{P}comm/bytes_sent"] = 2.4e7
    m[f"{P}comm/hook_ms"] = 40 + rng.random() * 5
    m[f"{P}comm/peak_extra_mb"] = 96.0
    if step % 10 == 0:
        cos = []
        for a, b in itertools.combinations(langs, 2):
            v = max(
                -1.0,
                min(
                    1.0, 0.4 - conflict + 0.3 * math.sin(step / 30 + len(a + b)) + rng.gauss(0, 0.1)
                ),
            )
            m[P + vocab.COS.key(a, b)] = v
            cos.append(v)
        m[f"{P}cos_min"] = min(cos)
        m[f"{P}cos_mean"] = sum(cos) / len(cos)
        # Ordered pairs, no diagonal: what the monitor logs.
        for a, b in itertools.permutations(langs, 2):
            # lr * g_i . g_j / L_j: tiny next to cosines, as in real runs (1e-7 .. 3e-5).
            m[P + vocab.AFFINITY.key(a, b)] = 1e-5 * rng.gauss(0, 1)
    return m


def write_csv_run(
    save_dir: Path,
    name: str,
    *,
    langs: tuple[str, ...] = ("de", "en", "fr", "sw"),
    steps: int = 200,
    val_every: int = 50,
    conflict: float = 0.3,
    seed: int = 0,
) -> Path:
    """Logs through Lightning's own CSVLogger, so rows are NaN-sparse as in a real run."""
    rng = random.Random(seed)
    logger = CSVLogger(save_dir, name=name, version=0)
    logger.log_hyperparams({"aggregator": name, "languages": list(langs), "lr": 3e-4})
    langs_l = sorted(langs)
    for step in range(steps):
        m = metrics_at(step, langs_l, rng, conflict)
        m["epoch"] = step // 100
        logger.log_metrics(m, step=step)
        if (step + 1) % val_every == 0:
            val = {"epoch": step // 100}
            for i, lang in enumerate(langs_l):
                loss = 4.0 * math.exp(-step / (70 + 20 * i)) + 1.2 + conflict / 2
                val[f"val/loss/{lang}"] = loss
                val[f"val/ppl/{lang}"] = math.exp(loss)
            val["val/loss"] = sum(val[f"val/loss/{x}"] for x in langs_l) / len(langs_l)
            logger.log_metrics(val, step=step)
    logger.save()
    return Path(logger.log_dir)


def write_wandb_and_csv_run(
    root: Path, name: str, *, langs: tuple[str, ...] = ("de", "en", "fr"), steps: int = 40
) -> tuple[Path, Path]:
    """One run logged to offline W&B and to CSV at once, as the example does.

    Returns the W&B run directory (``root/wandb/offline-run-*``) and the CSV version directory
    (``root/<name>/version_0``), once W&B's writer has flushed the whole log.
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from lightning_bmoo.report import wait_for_run

    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    try:
        loggers = [
            WandbLogger(offline=True, save_dir=str(root), project="bmoo", name=name),
            CSVLogger(root, name=name, version=0),
        ]
        rng = random.Random(0)
        for logger in loggers:
            logger.log_hyperparams({"aggregator": "mgda", "lr": 3e-4})
        for step in range(steps):
            metrics = metrics_at(step, sorted(langs), rng, 0.3)
            for logger in loggers:  # what Lightning's trainer does with several loggers
                logger.log_metrics(metrics, step=step)
        val = {f"val/loss/{lang}": 2.0 + i / 10 for i, lang in enumerate(sorted(langs))}
        for logger in loggers:
            logger.log_metrics({**val, "val/loss": 2.1}, step=steps - 1)
            logger.save()
    finally:
        wandb.finish()
        mp.undo()
    # wandb.finish() can return while its writer still flushes the log.
    (run_dir,) = [p.parent for p in (root / "wandb").glob("offline-run-*/run-*.wandb")]
    wait_for_run(run_dir)
    return run_dir, Path(loggers[1].log_dir)
