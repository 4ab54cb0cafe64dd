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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..vocabulary import STEP_METRIC
from .errors import LogError, RunDirError

# W&B rows carry several step counters; the Lightning global step is the one that lines up
# with CSV logs and with the step the callback logged at.
STEP_KEYS = ("step", STEP_METRIC, "_step")
# Deeper than this, a search for runs is more likely to wander into a dataset than a log.
_MAX_DEPTH = 4
# Two logs of one run hold the same values; CSV text and W&B JSON both round-trip floats.
_SAME = 1e-9

__all__ = ["LogError", "Run", "RunDirError", "find_runs", "load_run", "load_runs"]


@dataclass
class Run:
    """One run: its scalar rows, keyed by metric name, each with an integer ``step``.

    Attributes:
        name: the run's name in the page.
        source: ``"csv"`` or ``"wandb"``.
        path: the run's directory.
        rows: numeric cells of every logged row, with ``step``.
        config: hyperparameters (``hparams.yaml``, or the W&B config).
        finished: whether the log says the run ended (W&B's exit record); ``None`` where the
            source cannot tell (CSV).
        problem: why the log was read only in part (``partial=True``), else ``None``.
        tables: W&B tables by key: ``(step, file)`` of each logged table, in order.
        duplicates: the paths of other logs of this same run that were left out.
    """

    name: str
    source: str
    path: Path
    rows: list[dict[str, float]]
    config: dict[str, Any] = field(default_factory=dict)
    finished: bool | None = None
    problem: str | None = None
    tables: dict[str, list[tuple[int, Path]]] = field(default_factory=dict)
    duplicates: list[Path] = field(default_factory=list)
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
        """Every metric with at least one finite value."""
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
        """``(step, value)`` of the last finite value of ``key``."""
        xs, ys = self.series(key)
        return (xs[-1], ys[-1]) if xs else None

    def same_data(self, other: Run) -> bool:
        """Whether both hold the same metrics at the same steps with the same values."""
        mine, theirs = self.columns, other.columns
        if mine.keys() != theirs.keys() or not mine:
            return False
        for key, (xs, ys) in mine.items():
            xs2, ys2 = theirs[key]
            if xs != xs2 or any(not math.isclose(a, b, rel_tol=_SAME) for a, b in zip(ys, ys2)):
                return False
        return True


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
    """A Lightning CSVLogger version directory (``metrics.csv``).

    Raises:
        LogError: if ``metrics.csv`` is not a readable CSV file.
    """
    path = run_dir / "metrics.csv"
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            rows = normalise_rows(reader)
        except csv.Error as error:
            limit = csv.field_size_limit()
            why = (
                f"a field is longer than {limit // 1024} KiB, Python's csv limit"
                if "field larger than field limit" in str(error)
                else str(error)
            )
            raise LogError(
                path, f"line {reader.reader.line_num}: {why}; not a CSVLogger log?"
            ) from None
        except UnicodeDecodeError as error:
            raise LogError(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
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


def read_wandb_run(run_dir: Path, name: str | None = None, *, partial: bool = False) -> Run:
    """An offline W&B run directory (``offline-run-*`` holding ``run-<id>.wandb``).

    Raises:
        LogError: if the log is damaged (unless ``partial``) or not a W&B log.
    """
    from . import wandb_offline

    data = wandb_offline.read_run(run_dir, partial=partial)
    # W&B stores each config entry as {"value": ..., "desc": ...}; keep the values.
    config = {
        k: (v["value"] if isinstance(v, dict) and "value" in v else v)
        for k, v in data.config.items()
        if not str(k).startswith("_")
    }
    tables: dict[str, list[tuple[int, Path]]] = {}
    history = []
    for row in data.history:
        step = row.get(STEP_METRIC, row.get("_step"))
        for key, value in row.items():
            if isinstance(value, dict) and value.get("_type") == "table-file" and "path" in value:
                tables.setdefault(key, []).append(
                    (int(step or 0), run_dir / "files" / value["path"])
                )
        # "_runtime", "_timestamp": W&B bookkeeping, not metrics ("_step" is read as a step).
        history.append({k: v for k, v in row.items() if not k.startswith("_") or k == "_step"})
    return Run(
        name or data.name or _default_name(run_dir),
        "wandb",
        run_dir,
        normalise_rows(history),
        config,
        finished=data.finished,
        problem=data.problem,
        tables=tables,
    )


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


def find_runs(path: str | Path) -> list[tuple[str, Path]]:
    """``(source, run_dir)`` for every run at or below ``path``, sorted by path.

    Raises:
        RunDirError: if ``path`` is not a directory.
    """
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


def load_run(source: str, run_dir: Path, name: str | None = None, *, partial: bool = False) -> Run:
    """One run of ``find_runs``.

    Raises:
        LogError: if its log cannot be read (W&B logs: unless ``partial``).
    """
    if source == "wandb":
        return read_wandb_run(run_dir, name, partial=partial)
    return read_csv_run(run_dir, name)


def load_runs(path: str | Path, name: str | None = None, *, partial: bool = False) -> list[Run]:
    """Every run at or below ``path``; ``name`` labels it when there is exactly one.

    Raises:
        RunDirError: if ``path`` holds no run.
        LogError: at the first run whose log cannot be read (W&B logs: unless ``partial``).
    """
    found = find_runs(Path(path))
    if not found:
        raise RunDirError(
            f"{path}: no run found. Expected a Lightning CSVLogger directory (with "
            "metrics.csv) or an offline W&B run directory (with a run-<id>.wandb file), "
            "or a folder above one."
        )
    label = name if len(found) == 1 else None
    return [load_run(source, run_dir, label, partial=partial) for source, run_dir in found]


def drop_duplicates(runs: Sequence[Run]) -> list[Run]:
    """``runs`` with each run logged twice (CSV and W&B, as the example does) kept once.

    Two runs are one when they come from different sources and :meth:`Run.same_data` holds:
    the same metrics at the same steps with the same values, which two runs that trained
    separately never share. The W&B copy is kept (it also holds tables and the exit status);
    the CSV copy's path goes to its ``duplicates``.
    """
    kept: list[Run] = []
    for run in runs:
        twin = next((k for k in kept if k.source != run.source and k.same_data(run)), None)
        if twin is None:
            kept.append(run)
            continue
        if run.source == "wandb":
            kept[kept.index(twin)] = run
            run.duplicates.append(twin.path)
            run.duplicates.extend(twin.duplicates)
        else:
            twin.duplicates.append(run.path)
    return kept
