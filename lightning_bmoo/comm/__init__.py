"""The bucket-MOO communication hooks for DDP and FSDP2, usable with plain torch (no Lightning)."""

import warnings as _warnings
from typing import Any as _Any

from .base import HookState
from .fsdp_hook import install_fsdp_bucket_moo_hook, register_fsdp_bucket_moo_hook
from .fsdp_state import FSDPBucketMOOState
from .hook import bucket_moo_hook, install_bucket_moo_hook, register_bucket_moo_hook
from .layout import SlotTasks
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
    "SlotTasks",
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


def __getattr__(name: str) -> _Any:
    # Old names, still importable with a warning.
    if name == "Layout":
        _warnings.warn(
            "lightning_bmoo.comm.Layout is deprecated: it is SlotTasks (the step's slots and the "
            "tasks they form).",
            DeprecationWarning,
            stacklevel=2,
        )
        return SlotTasks
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
