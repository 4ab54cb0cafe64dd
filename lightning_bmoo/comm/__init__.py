"""The bucket-MOO communication hooks for DDP and FSDP2, usable with plain torch (no Lightning)."""

from .base import HookState
from .fsdp_hook import install_fsdp_bucket_moo_hook, register_fsdp_bucket_moo_hook
from .fsdp_state import FSDPBucketMOOState
from .hook import bucket_moo_hook, install_bucket_moo_hook, register_bucket_moo_hook
from .layout import Layout
from .options import GRANULARITIES, NONFINITE_POLICIES, HookOptions, check_hook_options
from .solve import Solution, solve_group
from .state import BucketMOOState
from .stats import GroupStats, StepStats
from .transports import TRANSPORTS

__all__ = [
    "GRANULARITIES",
    "NONFINITE_POLICIES",
    "TRANSPORTS",
    "BucketMOOState",
    "FSDPBucketMOOState",
    "GroupStats",
    "HookOptions",
    "HookState",
    "Layout",
    "Solution",
    "StepStats",
    "bucket_moo_hook",
    "check_hook_options",
    "install_bucket_moo_hook",
    "install_fsdp_bucket_moo_hook",
    "register_bucket_moo_hook",
    "register_fsdp_bucket_moo_hook",
    "solve_group",
]
