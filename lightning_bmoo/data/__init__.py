"""Language-homogeneous batching for multilingual data-parallel training (no Lightning here)."""

from typing import Any

from .collate import collate_with_language
from .sampler import LanguageBatchSampler
from .schedule import ProbabilitySpec

__all__ = ["LanguageBatchSampler", "ProbabilitySpec", "check_dataloader", "collate_with_language"]


def __getattr__(name: str) -> Any:
    # check_dataloader reads Lightning's trainer, so it lives with the strategies; the name
    # stays importable from here without making this package import Lightning.
    if name == "check_dataloader":
        from ..strategy.samplers import check_dataloader

        return check_dataloader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
