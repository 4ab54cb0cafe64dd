"""Language-homogeneous batching for multilingual data-parallel training."""

from .collate import collate_with_language
from .sampler import LanguageBatchSampler, check_dataloader
from .schedule import ProbabilitySpec

__all__ = ["LanguageBatchSampler", "ProbabilitySpec", "check_dataloader", "collate_with_language"]
