"""lightning_bmoo: bucket-level multi-objective optimisation for multilingual training."""

from .aggregators import Aggregator, available_aggregators, get_aggregator
from .callbacks import InterferenceMonitor
from .data import LanguageBatchSampler, check_dataloader, collate_with_language
from .strategy import BucketMOOFSDPStrategy, BucketMOOStrategy

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "BucketMOOFSDPStrategy",
    "BucketMOOStrategy",
    "InterferenceMonitor",
    "LanguageBatchSampler",
    "__version__",
    "available_aggregators",
    "check_dataloader",
    "collate_with_language",
    "get_aggregator",
]
