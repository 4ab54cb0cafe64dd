"""Callbacks that read the bucket-MOO hook's statistics: the interference monitor."""

from .figures import GroupConflict, Interference, interference, tag_affinity
from .monitor import InterferenceMonitor

__all__ = ["GroupConflict", "Interference", "InterferenceMonitor", "interference", "tag_affinity"]
