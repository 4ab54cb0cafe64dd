"""Offline reading and reporting of finished runs: CSV logs and offline W&B runs to HTML.

``build_report(load_runs("logs/"))`` is the page ``bmoo-report logs/`` writes. Nothing here
imports torch or Lightning; wandb is imported only to decode W&B logs.
"""

from .errors import LogError, RunDirError
from .page import build_report
from .sources import Run, load_runs
from .wandb_offline import OfflineRun, find_offline_runs, iter_records, read_run, wait_for_run

__all__ = [
    "LogError",
    "OfflineRun",
    "Run",
    "RunDirError",
    "build_report",
    "find_offline_runs",
    "iter_records",
    "load_runs",
    "read_run",
    "wait_for_run",
]
