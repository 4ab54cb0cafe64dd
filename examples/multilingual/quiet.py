"""Silences third-party chatter that says nothing to the example's user (never the library's).

Installed once per process by the examples' ``main()``: the DDP ranks Lightning starts run
``main()`` too, so they are silenced as well.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

from transformers.utils import logging as transformers_logging

_LIGHTNING = "lightning.pytorch"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Lightning advertises litlogger at every Trainer start.
        return not str(record.msg).startswith("💡 Tip")


def silence_known_noise() -> None:
    """Filters warnings and log lines that come from Lightning or torch, not from the user."""
    # Lightning 2.6 calls an API that torch 2.13 deprecated, at every fit.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # peft 0.21 asks transformers 5 for an attribute that transformers deprecated.
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated")
    # transformers draws a progress bar for writing a model of one file.
    transformers_logging.disable_progress_bar()
    rank_zero = logging.getLogger(f"{_LIGHTNING}.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())


@contextlib.contextmanager
def lightning_quiet() -> Iterator[None]:
    """Hides Lightning's info lines (devices found, why fit stopped) for a preparatory fit."""
    logger = logging.getLogger(_LIGHTNING)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
