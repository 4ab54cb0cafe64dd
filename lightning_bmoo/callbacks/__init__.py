"""Callbacks that read the bucket-MOO hook's statistics, and a progress bar in optimizer steps."""

from .figures import GroupConflict, Interference, interference, tag_affinity
from .monitor import InterferenceMonitor
from .progress import StepProgressBar

__all__ = [
    "GroupConflict",
    "Interference",
    "InterferenceMonitor",
    "StepProgressBar",
    "interference",
    "tag_affinity",
]
