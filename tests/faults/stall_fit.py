"""A 2-rank fit (Lightning's popen launcher) in which one rank stalls at step 2.

``python -m tests.faults.stall_fit OUT_DIR STALLED_RANK WHERE`` with WHERE ``slots`` (sleeps
between the two slots of a step) or ``backward`` (sleeps inside the backward pass). Every
rank writes ``OUT_DIR/rank{r}.json`` when its fit raises: the error and the seconds since the
stalled step began.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from lightning_bmoo import BucketMOOStrategy

from ..strategy.models import LanguageData, TinyModel
from ..trainers import quiet_trainer

TIMEOUT = 15.0  # also bounds the rendezvous: leave time for the ranks to start
STALL = 60.0


class StallingModel(TinyModel):
    def __init__(self, stalled_rank: int, where: str) -> None:
        super().__init__()
        self.stalled_rank, self.where = stalled_rank, where
        self.stall_began: float | None = None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if self.global_step == 2 and self.stall_began is None:
            self.stall_began = time.monotonic()
        loss = super().training_step(batch, batch_idx)
        if self.global_rank == self.stalled_rank and self.global_step == 2:
            if self.where == "slots" and batch_idx % 2 == 1:
                time.sleep(STALL)
            if self.where == "backward":
                loss.register_hook(lambda grad: time.sleep(STALL))
        return loss


class RecordFailure(Callback):
    """Writes ``rank{r}.json`` when the fit fails, from the first hook Lightning calls then.

    Callbacks hear of the exception before the strategy stops the other ranks; once it has,
    Lightning's launcher kills this process within seconds (its child observer), which can
    come before an ``except`` around ``fit`` runs.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_exception(self, trainer: Any, module: Any, error: BaseException) -> None:
        began = module.stall_began
        record = {
            "error": f"{type(error).__name__}: {error}",
            "seconds": None if began is None else time.monotonic() - began,
        }
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main(out_dir: str, stalled_rank: int, where: str) -> None:
    model = StallingModel(stalled_rank, where)
    trainer = quiet_trainer(
        callbacks=[RecordFailure(out_dir)],
        strategy=BucketMOOStrategy(timeout=timedelta(seconds=TIMEOUT)),
        devices=2,
        accumulate_grad_batches=2,
        max_steps=5,
        limit_val_batches=0,
        default_root_dir=out_dir,
    )
    trainer.fit(model, datamodule=LanguageData(slots_per_rank=2))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
