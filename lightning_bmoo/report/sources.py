"""Load a finished run's logged scalars into one table of rows.

Two sources are understood: a Lightning ``CSVLogger`` directory (``metrics.csv``, with
``hparams.yaml`` next to it) and an offline W&B run directory (``run-<id>.wandb``), read
through :mod:`lightning_bmoo.report.wandb_offline`. A directory above either (a CSV save dir
with ``version_*`` folders, a W&B ``wandb/`` folder, a project folder holding ``wandb/``)
yields every run found below it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# W&B rows carry several step counters; the Lightning global step is the one that lines up
# with CSV logs and with the step the callback logged at.
STEP_KEYS = ("step", "trainer/global_step", "_step")
# Deeper than this, a search for runs is more likely to wander into a dataset than a log.
_MAX_DEPTH = 4


class RunDirError(ValueError):
    """A path that holds neither a CSV logger run nor an offline W&B run."""


@dataclass
class Run:
    """One run: its scalar rows, keyed by metric name, each with an integer ``step``."""

    name: str
    source: str  # "csv" or "wandb"
    path: Path
    rows: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)
    _by_step: dict[int, dict[str, float]] | None = field(default=None, repr=False)
    _columns: dict[str, tuple[list[int], list[float]]] | None = field(default=None, repr=False)

    @property
    def by_step(self) -> dict[int, dict[str, float]]:
        """Rows merged per step (later values win), steps ascending.

        Lightning writes train and validation metrics of one step on separate rows.
        """
        if self._by_step is None:
            merged: dict[int, dict[str, float]] = {}
            for row in self.rows:
                merged.setdefault(int(row["step"]), {}).update(row)
            self._by_step = dict(sorted(merged.items()))
        return self._by_step

    @property
    def columns(self) -> dict[str, tuple[list[int], list[float]]]:
        """Per metric, the steps it was logged at and its finite values."""
        if self._columns is None:
            columns: dict[str, tuple[list[int], list[float]]] = {}
            for step, row in self.by_step.items():
                for key, value in row.items():
                    if key != "step" and math.isfinite(value):
                        xs, ys = columns.setdefault(key, ([], []))
                        xs.append(step)
                        ys.append(value)
            self._columns = columns
        return self._columns

    def metric_names(self) -> set[str]:
        return set(self.columns)

    def key_for(self, name: str) -> str | None:
        """The logged key for ``name``, also when Lightning suffixed it.

        ``self.log(..., on_step=True, on_epoch=True)`` logs ``name_step`` and ``name_epoch``.
        """
        for key in (name, f"{name}_step", f"{name}_epoch"):
            if key in self.columns:
                return key
        return None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Steps and finite values of ``key``; empty lists when never logged."""
        return self.columns.get(key, ([], []))

    def last(self, key: str) -> tuple[int, float] | None:
        xs, ys = self.series(key)
        return (xs[-1], ys[-1]) if xs else None


def _to_float(value: Any) -> float | None:
    # bool is an int subclass; a logged flag is not a curve worth drawing.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def normalise_rows(raw: Iterable[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Numeric cells only, blanks dropped, one ``step`` per row.

    Rows without any step counter get their position, as Lightning's CSV writer does.
    """
    rows: list[dict[str, float]] = []
    for i, cells in enumerate(raw):
        row = {k: v for k, v in ((k, _to_float(v)) for k, v in cells.items()) if v is not None}
        step = next((row[k] for k in STEP_KEYS if k in row and math.isfinite(row[k])), float(i))
        for k in STEP_KEYS:
            row.pop(k, None)
        row["step"] = float(int(step))
        if len(row) > 1:
            rows.append(row)
    return rows


def read_csv_run(run_dir: Path, name: str | None = None) -> Run:
    """A Lightning CSVLogger version directory (``metrics.csv``)."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = normalise_rows(csv.DictReader(f))
    config: dict[str, Any] = {}
    hparams = run_dir / "hparams.yaml"
    if hparams.is_file():
        try:
            import yaml

            loaded = yaml.safe_load(hparams.read_text())
            if isinstance(loaded, dict):
                config = loaded
        except Exception:  # a config we cannot parse must not cost the report
            config = {}
    return Run(name or _default_name(run_dir), "csv", run_dir, rows, config)


def read_wandb_run(run_dir: Path, name: str | None = None) -> Run:
    """An offline W&B run directory (``offline-run-*`` holding ``run-<id>.wandb``)."""
    from . import wandb_offline

    data = wandb_offline.read_run(run_dir)
    history = _field(data, "history") or []
    config = _field(data, "config") or {}
    # W&B stores each config entry as {"value": ..., "desc": ...}; keep the values.
    config = {
        k: (v["value"] if isinstance(v, dict) and "value" in v else v)
        for k, v in dict(config).items()
        if not str(k).startswith("_")
    }
    # "_runtime", "_timestamp": W&B bookkeeping, not metrics ("_step" is read as a step).
    history = [
        {k: v for k, v in row.items() if not k.startswith("_") or k == "_step"} for row in history
    ]
    name = name or _wandb_display_name(run_dir) or _default_name(run_dir)
    return Run(name, "wandb", run_dir, normalise_rows(history), config)


def _wandb_display_name(run_dir: Path) -> str | None:
    """The run's name (``WandbLogger(name=...)``), from the first ``run`` record."""
    from . import wandb_offline

    try:
        for log in sorted(run_dir.glob("run-*.wandb")):
            for record in wandb_offline.iter_records(log):
                if record.WhichOneof("record_type") == "run":
                    return record.run.display_name or None
    except ValueError:  # unreadable here means read_run already said so
        return None
    return None


def _field(data: Any, name: str) -> Any:
    return data.get(name) if isinstance(data, Mapping) else getattr(data, name, None)


def _default_name(run_dir: Path) -> str:
    # "mgda/version_0" and "wandb/offline-run-..." say little without their parent.
    parts = run_dir.resolve().parts
    if run_dir.name.startswith(("version_", "offline-run-", "run-")) and len(parts) >= 2:
        return "/".join(parts[-2:])
    return run_dir.name


def _is_csv_run(path: Path) -> bool:
    return (path / "metrics.csv").is_file()


def _is_wandb_run(path: Path) -> bool:
    return any(p.suffix == ".wandb" and p.is_file() for p in path.glob("*.wandb"))


def find_runs(path: Path) -> list[tuple[str, Path]]:
    """``(source, run_dir)`` for every run at or below ``path``, sorted by path."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: not a directory")
    found: list[tuple[str, Path]] = []
    # W&B keeps a "latest-run" symlink next to the run it points at: walk real dirs only.
    stack = [(path, 0)]
    while stack:
        here, depth = stack.pop()
        if _is_csv_run(here):
            found.append(("csv", here))
        elif _is_wandb_run(here):
            found.append(("wandb", here))
        elif depth < _MAX_DEPTH:
            stack.extend(
                (p, depth + 1)
                for p in here.iterdir()
                if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
            )
    return sorted(found, key=lambda item: str(item[1]))


def load_runs(path: str | Path, name: str | None = None) -> list[Run]:
    """Every run at or below ``path``; ``name`` labels it when there is exactly one."""
    found = find_runs(Path(path))
    if not found:
        raise RunDirError(
            f"{path}: no run found. Expected a Lightning CSVLogger directory (with "
            "metrics.csv) or an offline W&B run directory (with a run-<id>.wandb file), "
            "or a folder above one."
        )
    label = name if len(found) == 1 else None
    readers = {"csv": read_csv_run, "wandb": read_wandb_run}
    return [readers[source](run_dir, label) for source, run_dir in found]
