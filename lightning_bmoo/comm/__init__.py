"""The bucket-MOO DDP communication hook; usable with plain torch DDP, without Lightning."""

from .hook import bucket_moo_hook, register_bucket_moo_hook
from .layout import Layout
from .state import GRANULARITIES, NONFINITE_POLICIES, BucketMOOState, check_hook_options
from .stats import GroupStats, StepStats
from .transports import TRANSPORTS

__all__ = [
    "GRANULARITIES",
    "NONFINITE_POLICIES",
    "TRANSPORTS",
    "BucketMOOState",
    "GroupStats",
    "Layout",
    "StepStats",
    "bucket_moo_hook",
    "check_hook_options",
    "register_bucket_moo_hook",
]
