"""Forked gloo ranks for the benchmarks: each runs a function, every rank's result comes back."""

from __future__ import annotations

import gc
import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch._dynamo  # DDP and FSDP import it lazily: once, before forking
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, port: int, out_dir: str, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = fn(rank, world, *args)
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    del result
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], world: int, *args: Any) -> list[Any]:
    """Runs ``fn(rank, world, *args)`` on ``world`` forked gloo ranks, one intra-op thread
    each, in fresh processes; returns every rank's return value, by rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker, args=(world, port, out_dir, fn, args), nprocs=world, start_method="fork"
        )
        return [torch.load(os.path.join(out_dir, f"{r}.pt")) for r in range(world)]
