"""Runs the protocol on a pool of single-threaded worker processes, resumably, within a budget.

Every finished run is one JSON file under ``OUT/runs/<regime>/`` named by its key (a hash of
everything it depends on), written atomically; a restart reads them and runs only what is
missing. Prepared regimes (tokenizer and base model) are cached under ``OUT/prepared``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from .config import Arm, Regime, RunSpec
from .protocol import Plan

#: Seconds per run assumed before any run of a regime has finished.
DEFAULT_RUN_SECONDS = 40.0


def load_results(out: Path, regime: Regime) -> dict[str, dict]:
    """Every finished run of ``regime`` under ``out``, by key."""
    results = {}
    for path in sorted((out / "runs" / regime.name).glob("*.json")):
        result = json.loads(path.read_text())
        results[result["key"]] = result
    return results


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    # Raises once this process ran parallel work (workers=0 after other torch use): leave it.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def _prepare(regime: Regime, out: Path) -> dict[str, Any]:
    from .model import prepare

    return prepare(regime, out)


def _run(spec: RunSpec, out: Path) -> dict[str, Any]:
    from .train import finetune

    result = finetune(spec, out)
    folder = out / "runs" / spec.regime.name
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{spec.file_name}.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, folder / spec.file_name)
    return result


@dataclass
class Progress:
    """Counts and timing, for the log and the budget."""

    started: float = field(default_factory=time.monotonic)
    done: int = 0
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def per_run(self, regime: str, results: dict[str, dict]) -> float:
        measured = self.seconds.get(regime) or [r["seconds"] for r in results.values()]
        return sum(measured) / len(measured) if measured else DEFAULT_RUN_SECONDS


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_protocol(
    regimes: Sequence[Regime],
    arms: Sequence[Arm],
    out: Path,
    *,
    workers: int = 2,
    budget_hours: float = 6.0,
) -> bool:
    """Runs every regime's protocol until done or the budget is spent.

    Args:
        regimes: the regimes, in priority order (earlier ones get the workers first).
        arms: the arms to compare (the reference arm's pilot runs in any case).
        out: the results folder.
        workers: worker processes (one thread each); 0 runs everything in this process.
        budget_hours: no run starts after this much wall time; what is finished is kept.

    Returns:
        Whether every planned run finished.
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the workers
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    deadline = progress.started + budget_hours * 3600
    results = {r.name: load_results(out, r) for r in regimes}
    _estimate(regimes, arms, results, progress, workers)

    pool = (
        ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker)
        if workers > 0
        else None
    )
    if pool is None:
        _init_worker()
    running: dict[Future, tuple[str, Any]] = {}
    prepared: set[str] = set()
    try:
        while True:
            queue = _next_tasks(regimes, arms, results, running, prepared, out)
            capacity = max(workers, 1) - len(running)
            for kind, item in queue[:capacity]:
                if time.monotonic() > deadline:
                    break
                running[_submit(pool, kind, item, out)] = (kind, item)
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                kind, item = running.pop(future)
                _collect(kind, item, future, results, prepared, progress, out)
        remaining = sum(len(Plan(r, arms, results[r.name]).pending()) for r in regimes)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    hours = (time.monotonic() - progress.started) / 3600
    log(f"{progress.done} run(s) in {hours:.2f} h; {remaining} planned run(s) not done")
    return remaining == 0


def _submit(pool: ProcessPoolExecutor | None, kind: str, item: Any, out: Path) -> Future:
    fn = _prepare if kind == "prepare" else _run
    if pool is not None:
        return pool.submit(fn, item, out)
    future: Future = Future()
    try:
        future.set_result(fn(item, out))
    except Exception as error:  # reported by _collect, like a worker's
        future.set_exception(error)
    return future


def _next_tasks(regimes, arms, results, running, prepared, out) -> list[tuple[str, Any]]:
    """Tasks ready to start, most urgent first: missing base models, then runs by regime
    order and protocol stage."""
    from .model import prepare_dir

    busy = {
        item.key if kind == "run" else str(prepare_dir(item, out))
        for kind, item in running.values()
    }
    tasks: list[tuple[tuple, str, Any]] = []
    for index, regime in enumerate(regimes):
        folder = str(prepare_dir(regime, out))
        if folder not in prepared:
            if folder not in busy:
                busy.add(folder)  # regimes that share a base model prepare it once
                tasks.append(((index, -1, 0), "prepare", regime))
            continue
        for stage, spec in Plan(regime, arms, results[regime.name]).pending():
            if spec.key not in busy:
                tasks.append(((index, stage, len(tasks)), "run", spec))
    tasks.sort(key=lambda t: t[0])
    return [(kind, item) for _, kind, item in tasks]


def _collect(kind, item, future, results, prepared, progress, out) -> None:
    from .model import prepare_dir

    try:
        result = future.result()
    except Exception as error:
        what = item.name if kind == "prepare" else item.describe()
        log(f"FAILED {kind} {what}: {type(error).__name__}: {error}")
        raise
    if kind == "prepare":
        prepared.add(str(prepare_dir(item, out)))
        log(
            f"prepared {item.name}: base model pretrained in {result['seconds']:.0f} s "
            f"(cached: {result['seconds'] == 0}), final pretraining loss "
            f"{result['pretrain_loss']:.3f}"
        )
        return
    results[item.regime.name][item.key] = result
    progress.done += 1
    progress.seconds.setdefault(item.regime.name, []).append(result["seconds"])
    val = sum(result["val_loss"].values()) / len(result["val_loss"])
    log(f"done {item.describe()}: validation {val:.4f}, {result['seconds']:.0f} s")


def _estimate(regimes, arms, results, progress, workers) -> None:
    total = 0.0
    for regime in regimes:
        plan = Plan(regime, arms, results[regime.name])
        todo = plan.upper_bound() - plan.finished()
        seconds = progress.per_run(regime.name, results[regime.name])
        total += max(todo, 0) * seconds
        log(
            f"{regime.name}: {plan.finished()} run(s) finished, at most "
            f"{max(todo, 0)} to go at ~{seconds:.0f} s each"
        )
    log(f"estimate: at most {total / max(workers, 1) / 3600:.1f} h on {max(workers, 1)} worker(s)")
