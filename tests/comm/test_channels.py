"""The hook's side channels on a group without a CPU backend (NCCL's case, emulated)."""

from __future__ import annotations

import os
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_bmoo.comm.layout import exchange_slot
from lightning_bmoo.comm.transports import CommCounter, ShardedTransport, open_channels
from tests.distributed import RemoteError, free_port


def _on_a_device_only_group(rank: int, world: int) -> dict:
    group = dist.distributed_c10d._get_default_group()
    assert torch.device("cpu") not in group._device_types
    channels = open_channels(group)
    languages = exchange_slot(
        ["en", "de", "fr"][rank],
        slots_per_rank=1,
        step=0,
        slot=0,
        optimizer_steps=0,
        group=channels.control,
        world_size=world,
    )
    transport = ShardedTransport(channels, rank, world)
    summed = transport.reduce(torch.full((3,), rank + 1.0, dtype=torch.float64), CommCounter())
    return {
        "languages": languages,
        "summed": summed.tolist(),
        "gather": [d.type for d in channels.gather._device_types],
        "again": open_channels(group).control is channels.control,
    }


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # backend="cuda:gloo" makes groups that, like backend="nccl", have no CPU backend: a CPU
    # tensor on them fails with "No backend type associated with device type cpu". New
    # groups default to it, as they default to NCCL after init_process_group("nccl").
    dist.init_process_group("cuda:gloo", rank=rank, world_size=world)
    try:
        result: object = _on_a_device_only_group(rank, world)
    except BaseException as error:
        result = RemoteError(f"rank {rank}: {error}\n{traceback.format_exc()}")
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_slot_messages_and_gramians_travel_on_a_cpu_channel_when_the_group_has_none():
    world = 3
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _worker, args=(world, free_port(), out_dir), nprocs=world, start_method="fork"
        )
        results = [
            torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False) for r in range(world)
        ]
    for result in results:
        if isinstance(result, RemoteError):
            raise result
        assert result["languages"] == ["en", "de", "fr"]
        assert result["summed"] == [6.0, 6.0, 6.0]
        # The rows and combined shards stay on the group's own backend (NCCL on GPUs).
        assert result["gather"] == ["cuda"]
        assert result["again"]  # created once per group
