"""Lightning integration: the DDP and FSDP2 strategies, ``"bmoo"`` and ``"bmoo_fsdp"``.

Everything that reads Lightning's trainer lives here: the strategies, the checks of the
training data (:func:`check_dataloader`, :func:`find_language_sampler`) and the batch's
language.
"""

from lightning.pytorch.strategies import StrategyRegistry

from .fsdp import BucketMOOFSDPStrategy
from .language import batch_language
from .samplers import SAMPLER_CHECKPOINT_KEY, check_dataloader, find_language_sampler
from .strategy import BucketMOOStrategy
from .training import CHECKPOINT_KEY, BucketMOOTraining

# Lightning registers only its own strategies; importing the package registers ours.
BucketMOOStrategy.register_strategies(StrategyRegistry)
BucketMOOFSDPStrategy.register_strategies(StrategyRegistry)

__all__ = [
    "CHECKPOINT_KEY",
    "SAMPLER_CHECKPOINT_KEY",
    "BucketMOOFSDPStrategy",
    "BucketMOOStrategy",
    "BucketMOOTraining",
    "batch_language",
    "check_dataloader",
    "find_language_sampler",
]
