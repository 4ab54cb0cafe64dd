"""Fits with ``Trainer(strategy="bmoo_fsdp")`` through Lightning's own launcher.

Run as ``python -m tests.fsdp.launch_fsdp OUT_DIR``: Lightning re-runs this command line for
rank 1, which pytest's own command line cannot be. Each rank writes ``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import lightning_bmoo  # noqa: F401  (registers "bmoo_fsdp")

from ..strategy.models import LanguageData
from .fits import ShardedTinyModel, ShardRecorder, quiet_trainer


def main(out_dir: str) -> None:
    recorder = ShardRecorder(out_dir)
    trainer = quiet_trainer(
        out_dir, "bmoo_fsdp", 2, accumulate_grad_batches=2, max_steps=3, callbacks=[recorder]
    )
    trainer.fit(ShardedTinyModel(), datamodule=LanguageData(slots_per_rank=2))
    torch.save(recorder.record, Path(out_dir, f"rank{trainer.global_rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
