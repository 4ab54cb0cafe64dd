"""The hook's checkpoint state: versioned, says what produced it, resumes exactly."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

from ..distributed import run_distributed
from .workload import loss_of, make_model, round_robin


def _steps(ddp, state, optimizer, steps, start, K=2):
    layout = round_robin(2, K)
    rank = torch.distributed.get_rank()
    for step in range(start, start + steps):
        for k in range(K):
            language = layout(step)[rank * K + k]
            with state.slot(language):
                (loss_of(ddp, language, step, k) / K).backward()
        optimizer.step()
        optimizer.zero_grad()


def _straight_and_resumed(rank, world_size):
    torch.manual_seed(0)
    straight = DDP(make_model(), bucket_cap_mb=0.002)
    s_state = register_bucket_moo_hook(straight, "gradvac", slots_per_rank=2)
    s_opt = torch.optim.SGD(straight.parameters(), lr=0.1, momentum=0.9)
    _steps(straight, s_state, s_opt, 2, 0)
    saved = copy.deepcopy(  # state_dict()s hold references to live tensors
        {
            "model": straight.module.state_dict(),
            "opt": s_opt.state_dict(),
            "hook": s_state.state_dict(),
        }
    )
    _steps(straight, s_state, s_opt, 2, 2)

    resumed = DDP(make_model(), bucket_cap_mb=0.002)
    resumed.module.load_state_dict(saved["model"])
    r_state = register_bucket_moo_hook(resumed, "gradvac", slots_per_rank=2)
    r_opt = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    r_opt.load_state_dict(saved["opt"])
    r_state.load_state_dict(saved["hook"])
    _steps(resumed, r_state, r_opt, 2, 2)
    return (
        saved["hook"],
        [p.detach() for p in straight.parameters()],
        [p.detach() for p in resumed.parameters()],
    )


def test_a_resumed_plain_torch_run_continues_exactly():
    saved, straight, resumed = run_distributed(_straight_and_resumed, 2)[0]
    assert saved["version"] == 2 and saved["step"] == 2 and saved["world_size"] == 2
    assert saved["options"]["aggregator"] == "gradvac"
    assert saved["options"]["granularity"] == "bucket" and saved["aggregator_state"]["state"]
    assert saved["layout_extra"] == {"bucket_cap_bytes": 2097}
    for p, q in zip(straight, resumed):
        assert torch.equal(p, q)


def _load(rank, world_size, saved, options):
    state = register_bucket_moo_hook(DDP(make_model()), slots_per_rank=2, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state.load_state_dict(saved)
    return state.step, state.aggregator.state_dict(), [str(w.message) for w in caught]


def _saved_gradvac(rank, world_size):
    torch.manual_seed(0)
    ddp = DDP(make_model(), bucket_cap_mb=0.002)
    state = register_bucket_moo_hook(ddp, "gradvac", slots_per_rank=2)
    _steps(ddp, state, torch.optim.SGD(ddp.parameters(), lr=0.1), 2, 0)
    return state.state_dict()


@pytest.fixture(scope="module")
def saved():
    return run_distributed(_saved_gradvac, 2)[0]


def test_another_granularity_warns_and_starts_the_aggregator_fresh(saved):
    step, aggregator_state, messages = run_distributed(
        _load, 2, saved, {"aggregator": "gradvac", "granularity": "parameter"}
    )[0]
    assert step == 2 and aggregator_state == {"state": {}}
    text = " ".join(messages)
    assert "granularity: 'bucket' -> 'parameter'" in text
    assert "bucket_cap_bytes" in text  # the default 25 MB buckets differ from the saved ones
    assert "starts from a fresh state" in text


def test_the_same_settings_restore_quietly(saved):
    step, aggregator_state, messages = run_distributed(_load, 2, saved, {"aggregator": "gradvac"})[
        0
    ]
    assert step == 2 and aggregator_state == saved["aggregator_state"]
    assert messages == [f for f in messages if "bucket_cap_bytes" in f]  # only the bucket size


def test_checkpoints_of_lightning_bmoo_0_1_still_load(saved):
    v1 = {  # what BucketMOOStrategy saved under checkpoint["bucket_moo"]
        "version": 1,
        "aggregator": "gradvac",
        "slots_per_rank": 2,
        "world_size": 2,
        "state": {"step": 2, "seed": 0, "aggregator": saved["aggregator_state"]},
    }
    plain = {"step": 2, "seed": 0, "aggregator": saved["aggregator_state"]}  # state_dict()
    for old in (v1, plain):
        step, aggregator_state, messages = run_distributed(
            _load, 2, old, {"aggregator": "gradvac"}
        )[0]
        assert step == 2 and aggregator_state == saved["aggregator_state"] and not messages
    with pytest.raises(Exception, match="Unsupported bucket-MOO checkpoint version 7"):
        run_distributed(_load, 2, {"version": 7}, {})
