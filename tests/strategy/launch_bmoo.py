"""Fits with ``Trainer(strategy="bmoo")`` (Lightning's popen launcher), then validates.

Run as ``python -m tests.strategy.launch_bmoo OUT_DIR``: Lightning re-runs this command line
for rank 1, which pytest's own command line cannot be.
"""

from __future__ import annotations

import sys

import lightning_bmoo.strategy  # noqa: F401  (registers "bmoo")

from ..trainers import quiet_trainer
from .models import LanguageData, Recorder, TinyModel


def main(out_dir: str) -> None:
    trainer = quiet_trainer(
        strategy="bmoo",
        devices=2,
        accumulate_grad_batches=2,
        max_steps=3,
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
