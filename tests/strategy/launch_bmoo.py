"""Fits with ``Trainer(strategy="bmoo")`` (Lightning's popen launcher), then validates.

Run as ``python -m tests.strategy.launch_bmoo OUT_DIR``: Lightning re-runs this command line
for rank 1, which pytest's own command line cannot be.
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl

import lightning_bmoo.strategy  # noqa: F401  (registers "bmoo")

from .models import LanguageData, Recorder, TinyModel


def main(out_dir: str) -> None:
    trainer = pl.Trainer(
        strategy="bmoo",
        accelerator="cpu",
        devices=2,
        accumulate_grad_batches=2,
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=out_dir,
        callbacks=[Recorder(out_dir)],
    )
    data = LanguageData(slots_per_rank=2)
    trainer.fit(TinyModel(), datamodule=data)
    # The process group was destroyed in teardown; validate initialises a new one.
    trainer.validate(TinyModel(), datamodule=data, verbose=False)


if __name__ == "__main__":
    main(sys.argv[1])
