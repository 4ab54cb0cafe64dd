"""What can go wrong when the report reads runs: no run where one was expected, a bad log."""

from __future__ import annotations

from pathlib import Path


class RunDirError(ValueError):
    """A path that holds neither a CSV logger run nor an offline W&B run."""


class LogError(ValueError):
    """A run's log that cannot be read (whole): corrupt, cut short, or not a log at all.

    Attributes:
        path: the file.
        offset: the byte where reading stopped, if known.
    """

    def __init__(self, path: str | Path, message: str, offset: int | None = None) -> None:
        super().__init__(f"{path}: {message}")
        self.path = Path(path)
        self.offset = offset
