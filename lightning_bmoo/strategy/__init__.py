"""Lightning integration: ``BucketMOOStrategy``, registered as ``Trainer(strategy="bmoo")``."""

from lightning.pytorch.strategies import StrategyRegistry

from .language import batch_language
from .strategy import CHECKPOINT_KEY, BucketMOOStrategy

# Lightning registers only its own strategies; importing the package registers ours.
BucketMOOStrategy.register_strategies(StrategyRegistry)

__all__ = ["CHECKPOINT_KEY", "BucketMOOStrategy", "batch_language"]
