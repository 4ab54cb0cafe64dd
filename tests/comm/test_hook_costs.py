"""What the hook spends per step, as counts: threads and validation of the solves, held memory,
copies, and the per-phase time record."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import get_aggregator
from lightning_bmoo.comm.stats import PHASES
from lightning_bmoo.comm.transports import _BROADCAST_MAX_RANKS

from ..distributed import run_distributed
from .workload import train

_MGDA = type(get_aggregator("mgda"))


class _Recording(_MGDA):
    """MGDA that records, per call, whether it was asked to validate and its thread count."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, int]] = []

    def __call__(self, gramian, *, validate=True, **kwargs):
        self.calls.append((validate, torch.get_num_threads()))
        return super().__call__(gramian, validate=validate, **kwargs)


def _solves(rank, world_size, granularity):
    torch.set_num_threads(2)  # a user's intra-op setting, which the hook must leave alone
    aggregator = _Recording()
    train(rank, world_size, K=2, aggregator=aggregator, granularity=granularity, steps=2)
    return aggregator.calls, torch.get_num_threads()


@pytest.mark.parametrize("granularity", ["parameter", "global"])
def test_solves_skip_validation_and_run_on_one_thread(granularity):
    # The hook's Gramians are exactly symmetric by construction, so checking each one costs
    # microseconds for nothing; T x T solves that wait for a second OpenMP thread on a busy
    # machine take milliseconds instead of microseconds.
    # Spawned: forked ranks that start OpenMP threads can deadlock (tests/distributed.py).
    calls, threads_after = run_distributed(_solves, 2, granularity, start_method="spawn")[0]
    assert calls and all(validate is False for validate, _ in calls)
    assert {threads for _, threads in calls} == {1}
    assert threads_after == 2


def _phases(rank, world_size, K):
    return train(rank, world_size, K=K, aggregator="mgda", steps=2)["stats"][-1]


@pytest.mark.parametrize("K", [1, 2])
def test_the_hooks_time_is_split_by_phase(K):
    stats = run_distributed(_phases, 2, K)[0]
    assert list(stats.seconds) == list(PHASES)
    assert all(seconds >= 0.0 for seconds in stats.seconds.values())
    assert sum(stats.seconds.values()) == pytest.approx(stats.hook_seconds, rel=1e-9)
    for phase in ("slots", "exchange", "wait", "gramian", "reduce", "solve", "combine"):
        assert stats.seconds[phase] > 0.0, phase


def _odd(rank, world_size, K, transport, bucket_cap_mb):
    from .workload import OddMLP

    def make():
        torch.manual_seed(0)
        return OddMLP()

    return train(
        rank,
        world_size,
        K=K,
        aggregator="mgda",
        transport=transport,
        make=make,
        bucket_cap_mb=bucket_cap_mb,
        steps=2,
    )


@pytest.mark.parametrize("world_size", [2, 3, _BROADCAST_MAX_RANKS + 1])
def test_uneven_buckets_hold_no_padded_copy(world_size):
    # Tiny buckets (a 100-byte cap), most of them no multiple of W. Rank 0 holds the exchanged
    # rows of two buckets at a time (one solved while the next one's Gramians are summed) and
    # combines into DDP's own bucket: its extra memory never exceeds the two largest buckets
    # (a padded copy of the result used to come on top).
    stats = run_distributed(_odd, world_size, 1, "sharded", 1e-4)[0]["stats"][-1]
    sizes = [group.numel for group in stats.groups]
    assert sum(sizes) == 127 and len(sizes) > 1
    assert sum(n % world_size != 0 for n in sizes) > 1
    assert 0 < stats.peak_extra_bytes <= sum(sorted(sizes)[-2:]) * 4
    small = sum(n < world_size for n in sizes)  # only the last rank's shard is not empty
    if world_size <= _BROADCAST_MAX_RANKS:
        # On CPUs every rank broadcasts its shard in place; empty shards are not sent.
        assert stats.collectives["broadcast"] == world_size * (len(sizes) - small) + small
        assert "all_gather" not in stats.collectives
    else:
        # An all-gather of the equal shards, and the tails broadcast by the last rank.
        assert stats.collectives["all_gather"] == len(sizes) - small
        assert stats.collectives["broadcast"] == sum(n % world_size != 0 for n in sizes)


def _slots(rank, world_size, K):
    result = train(rank, world_size, K=K, aggregator="mgda", steps=3)
    return result["stats"], sum(p.numel() for p in result["params"])


@pytest.mark.parametrize("K", [2, 3])
def test_each_slot_is_sent_during_its_own_backward_and_nothing_is_copied_aside(K):
    stats, numel = run_distributed(_slots, 2, K)[0]
    last = stats[-1]
    buckets = len(last.groups)
    # One all-to-all per bucket and slot (the earlier slots' traffic overlaps the later
    # microbatches), one broadcast per rank and bucket for the result.
    assert last.collectives["all_to_all"] == K * buckets
    assert last.collectives["broadcast"] == 2 * buckets
    # Held: the K - 1 earlier slots of every bucket (this rank's shard of every rank's rows:
    # numel elements each at W = 2) and the last slot's rows of two buckets at a time. No
    # copy of the slots, no concatenation of them at the last slot.
    two_largest = sum(sorted(group.numel for group in last.groups)[-2:])
    assert (K - 1) * numel * 4 < last.peak_extra_bytes <= ((K - 1) * numel + two_largest) * 4
    # DDP re-buckets the workload's parameters between the first two backward passes: the
    # slots sent under the first buckets are taken back and sent again under the new ones.
    assert stats[0].collectives["all_to_all"] > last.collectives["all_to_all"]
