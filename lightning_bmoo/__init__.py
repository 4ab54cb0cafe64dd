"""lightning_bmoo: bucket-level multi-objective optimisation for multilingual training."""

from .aggregators import Aggregator, available_aggregators, get_aggregator

__version__ = "0.1.0"

__all__ = ["Aggregator", "__version__", "available_aggregators", "get_aggregator"]
