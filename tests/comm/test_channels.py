"""The hook's side channels on a group without a CPU backend (NCCL's case, emulated)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from lightning_bmoo.comm.layout import announce_slot
from lightning_bmoo.comm.transports import CommCounter, ShardedTransport, open_channels
from tests.distributed import run_distributed


def _on_a_device_only_group(rank: int, world: int) -> dict:
    group = dist.distributed_c10d._get_default_group()
    assert torch.device("cpu") not in group._device_types
    channels = open_channels(group)
    languages = announce_slot(
        ["en", "de", "fr"][rank],
        slots_per_rank=1,
        step=0,
        slot=0,
        optimizer_steps=0,
        group=channels.control,
        world_size=world,
    ).wait()
    transport = ShardedTransport(channels, rank, world)
    summed = transport.reduce(torch.full((3,), rank + 1.0, dtype=torch.float64), CommCounter())
    return {
        "languages": languages,
        "summed": summed.tolist(),
        "gather": [d.type for d in channels.gather._device_types],
        "again": open_channels(group).control is channels.control,
    }


def test_slot_messages_and_gramians_travel_on_a_cpu_channel_when_the_group_has_none():
    # backend="cuda:gloo" makes groups that, like backend="nccl", have no CPU backend: a CPU
    # tensor on them fails with "No backend type associated with device type cpu". New
    # groups default to it, as they default to NCCL after init_process_group("nccl").
    results = run_distributed(_on_a_device_only_group, 3, backend="cuda:gloo")
    for result in results:
        assert result["languages"] == ["en", "de", "fr"]
        assert result["summed"] == [6.0, 6.0, 6.0]
        # The rows and combined shards stay on the group's own backend (NCCL on GPUs).
        assert result["gather"] == ["cuda"]
        assert result["again"]  # created once per group
