"""A stalled rank makes the others fail within the process group's timeout under FSDP too."""

from __future__ import annotations

import time

import pytest

from lightning_bmoo.comm import register_fsdp_bucket_moo_hook

from ..comm.workload import loss_of
from ..faults.ranks import run_ranks
from .models import sharded_mlp

TIMEOUT = 2.0  # the process group's timeout, seconds
STALL = 3 * TIMEOUT  # how long the stalled rank sleeps
MARGIN = 8.0  # what the survivors may take beyond the timeout


def _stall_between_slots(rank, world_size):
    model = sharded_mlp()
    state = register_fsdp_bucket_moo_hook(model, "mgda", slots_per_rank=2)
    for k in range(2):
        if rank == 1 and k == 1:
            time.sleep(STALL)
        with state.slot(("en", "de")[rank]):
            (loss_of(model, "en", 0, k) / 2).backward()
    return "finished"


def _stall_inside_backward(rank, world_size):
    model = sharded_mlp()
    state = register_fsdp_bucket_moo_hook(model, "mgda", granularity="global")
    if rank == 1:
        # After the root unit's reduce-scatter: the others wait inside the comm for the next.
        def stall_in_backward(module, args, out):
            out.register_hook(lambda grad: time.sleep(STALL))

        model.hidden.register_forward_hook(stall_in_backward)
    with state.slot(("en", "de")[rank]):
        loss_of(model, "en", 0, 0).backward()
    return "finished"


@pytest.mark.parametrize("stall", [_stall_between_slots, _stall_inside_backward])
def test_a_stalled_rank_fails_the_others_within_the_timeout(stall):
    outcomes = run_ranks(stall, 2, timeout=TIMEOUT, deadline=STALL + 30)
    survivor = outcomes[0]
    assert not survivor.hung and survivor.error is not None, survivor
    assert TIMEOUT - 0.5 <= survivor.seconds <= TIMEOUT + MARGIN, survivor.seconds
    assert "timed out" in survivor.error.lower() or "timeout" in survivor.error.lower()
    # The stalled rank, once awake, fails too instead of hanging on a dead peer.
    assert not outcomes[1].hung and outcomes[1].error is not None
