"""A stalled rank makes the others fail within the configured timeout, not in 30 minutes."""

from __future__ import annotations

import time

import pytest
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

from ..comm.workload import loss_of, make_model
from .ranks import run_ranks

TIMEOUT = 4.0  # the process group's timeout, seconds
STALL = 3 * TIMEOUT  # how long the stalled rank sleeps
MARGIN = 8.0  # what the survivors may take beyond the timeout


def _stall_between_slots(rank, world_size, transport):
    ddp = DDP(make_model(), bucket_cap_mb=0.002)
    state = register_bucket_moo_hook(ddp, "mgda", slots_per_rank=2, transport=transport)
    for k in range(2):
        if rank == 1 and k == 1:
            time.sleep(STALL)
        with state.slot("en" if rank == 0 else "de"):
            (loss_of(ddp, "en", 0, k) / 2).backward()
    return "finished"


def _stall_inside_backward(rank, world_size, transport):
    model = make_model()
    ddp = DDP(model, bucket_cap_mb=0.002)
    state = register_bucket_moo_hook(ddp, "mgda", transport=transport)
    if rank == 1:
        # The first layer's gradient is computed last: the other buckets are in flight.
        model.embed.weight.register_hook(lambda grad: time.sleep(STALL))
    with state.slot("en" if rank == 0 else "de"):
        loss_of(ddp, "en", 0, 0).backward()
    return "finished"


@pytest.mark.parametrize("transport", ["sharded", "gather"])
@pytest.mark.parametrize("stall", [_stall_between_slots, _stall_inside_backward])
def test_a_stalled_rank_fails_the_others_within_the_timeout(stall, transport):
    outcomes = run_ranks(stall, 2, transport, timeout=TIMEOUT, deadline=STALL + 30)
    survivor = outcomes[0]
    assert not survivor.hung and survivor.error is not None, survivor
    assert TIMEOUT - 0.5 <= survivor.seconds <= TIMEOUT + MARGIN, survivor.seconds
    assert "timed out" in survivor.error.lower() or "timeout" in survivor.error.lower()
    # The stalled rank, once awake, fails too instead of hanging on a dead peer.
    assert not outcomes[1].hung and outcomes[1].error is not None
