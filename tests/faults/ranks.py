"""Runs a function on gloo ranks that may fail, stall or die, and reports each rank's outcome.

Unlike ``tests.distributed.run_distributed``, a failing rank is an outcome here, not an error:
every rank's result (or error text) comes back with the time it took, and ranks still alive
after ``deadline`` seconds are killed and reported as hung.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch._dynamo
import torch.distributed as dist
import torch.multiprocessing as mp

from ..distributed import free_port


@dataclass
class Outcome:
    """What one rank did: its return value, or the error it raised, and when."""

    rank: int
    value: Any = None
    error: str | None = None
    seconds: float = 0.0  # from the rank's start (after the process group exists)
    hung: bool = False


def _worker(rank, fn, world_size, port, out_dir, timeout, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
    )
    start = time.monotonic()
    outcome = Outcome(rank)
    try:
        outcome.value = fn(rank, world_size, *args)
    except BaseException as error:
        outcome.error = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
    outcome.seconds = time.monotonic() - start
    torch.save(outcome, os.path.join(out_dir, f"{rank}.pt"))
    # A peer may be gone or stuck: leave without tearing gloo down politely.
    os._exit(0)


def run_ranks(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float, deadline: float
) -> list[Outcome]:
    """Runs ``fn(rank, world_size, *args)`` on ``world_size`` ranks whose collectives time out
    after ``timeout`` seconds; kills what is still running after ``deadline`` seconds."""
    with tempfile.TemporaryDirectory() as out_dir:
        context = mp.start_processes(
            _worker,
            args=(fn, world_size, free_port(), out_dir, timeout, args),
            nprocs=world_size,
            start_method="fork",
            join=False,
        )
        end = time.monotonic() + deadline
        for process in context.processes:
            process.join(max(0.0, end - time.monotonic()))
        outcomes = []
        for rank, process in enumerate(context.processes):
            if process.is_alive():
                process.kill()
                process.join()
            path = os.path.join(out_dir, f"{rank}.pt")
            if os.path.exists(path):
                outcomes.append(torch.load(path, weights_only=False))
            else:
                outcomes.append(Outcome(rank, hung=True))
    return outcomes
