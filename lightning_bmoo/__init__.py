"""lightning_bmoo: bucket-level multi-objective optimisation for multilingual training.

The top-level names are imported on first use, so that each part costs only what it needs:
``lightning_bmoo.comm`` (the plain-torch hook) loads torch but not Lightning, and the offline
report (``bmoo-report``) loads neither.

``import lightning_bmoo`` registers the strategy names (``Trainer(strategy="bmoo")``) with
Lightning, now if Lightning is loaded, else as soon as it is.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._registration import register_when_lightning_loads

__version__ = "0.1.0"

# name -> the submodule that defines it
_EXPORTS = {
    "Aggregator": "aggregators",
    "available_aggregators": "aggregators",
    "get_aggregator": "aggregators",
    "InterferenceMonitor": "callbacks",
    "LanguageBatchSampler": "data",
    "collate_with_language": "data",
    "BucketMOOStrategy": "strategy",
    "BucketMOOFSDPStrategy": "strategy",
    "check_dataloader": "strategy",
}

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

if TYPE_CHECKING:
    from .aggregators import Aggregator, available_aggregators, get_aggregator
    from .callbacks import InterferenceMonitor
    from .data import LanguageBatchSampler, collate_with_language
    from .strategy import BucketMOOFSDPStrategy, BucketMOOStrategy, check_dataloader


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


register_when_lightning_loads()
