"""Reading finished runs back: offline W&B run directories."""

from .wandb_offline import OfflineRun, find_offline_runs, iter_records, read_run, wait_for_run

__all__ = ["OfflineRun", "find_offline_runs", "iter_records", "read_run", "wait_for_run"]
