"""Runs a function on several ranks (gloo, forked, by default) and collects the results."""

from __future__ import annotations

import gc
import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch._dynamo  # DDP imports it lazily: seconds per forked rank otherwise)
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int, fn: Callable, world_size: int, port: int, out_dir: str, args: tuple, backend: str
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=_NCCL_TIMEOUT)
    else:
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    try:
        result: Any = fn(rank, world_size, *args)
    except BaseException as error:  # reported to the parent, which raises it
        result = RemoteError(
            f"rank {rank}: {type(error).__name__}: {error}\n" + traceback.format_exc()
        )
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    gc.collect()
    if not isinstance(result, RemoteError) and backend in ("gloo", "nccl"):
        dist.barrier()
    dist.destroy_process_group()


_NCCL_TIMEOUT = timedelta(seconds=60)


class RemoteError(Exception):
    """An exception raised on one of the ranks."""


def run_distributed(
    fn: Callable, world_size: int, *args: Any, start_method: str = "fork", backend: str = "gloo"
) -> list[Any]:
    """Runs ``fn(rank, world_size, *args)`` on ``world_size`` ranks; returns the results.

    Forked ranks start in a fraction of a second but must stay on one intra-op thread: a
    child that starts OpenMP threads after its parent used them can deadlock (libgomp is not
    fork-safe). ``start_method="spawn"`` for ranks that need several threads, and for CUDA.
    ``backend="nccl"`` puts rank ``r`` on CUDA device ``r`` (spawn them: CUDA does not
    survive fork), with a 60 s timeout.

    Raises:
        RemoteError: with the rank's traceback, when ``fn`` raised on some rank.
    """
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker,
            args=(fn, world_size, free_port(), out_dir, args, backend),
            nprocs=world_size,
            start_method=start_method,
        )
        results = [
            torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False)
            for r in range(world_size)
        ]
    for result in results:
        if isinstance(result, RemoteError):
            raise result
    return results
