"""A quiet CPU Trainer for tests: no logger, bar, summary, checkpoints or sanity check."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl


def quiet_trainer(**overrides: Any) -> pl.Trainer:
    """``pl.Trainer`` on CPU with everything that prints or writes off; ``overrides`` win.

    ``use_distributed_sampler`` is off: the tests' samplers shard over ranks themselves.
    """
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "use_distributed_sampler": False,
        "num_sanity_val_steps": 0,
    }
    settings.update(overrides)
    return pl.Trainer(**settings)
