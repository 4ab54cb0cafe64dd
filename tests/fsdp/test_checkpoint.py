"""A plain-torch FSDP run resumed from a distributed checkpoint continues exactly."""

from __future__ import annotations

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from lightning_bmoo.comm import register_fsdp_bucket_moo_hook

from ..comm.workload import round_robin
from ..distributed import run_distributed
from .models import run_steps, sharded_mlp

K = 2
OPTIONS = {"granularity": "parameter", "seed": 5}


def _fresh():
    model = sharded_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = register_fsdp_bucket_moo_hook(model, "gradvac", slots_per_rank=K, **OPTIONS)
    return model, optimizer, state


def _straight_and_resumed(rank, world_size, directory):
    layouts = [round_robin(world_size, K)(step) for step in range(4)]
    model, optimizer, state = _fresh()
    run_steps(model, layouts[:2], K, rank, "gradvac", optimizer=optimizer, state=state)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=directory)
    saved_hook = state.state_dict()
    torch.save(saved_hook, f"{directory}/hook{rank}.pt")  # what a user stores beside it
    run_steps(model, layouts[2:], K, rank, "gradvac", optimizer=optimizer, state=state, start=2)

    resumed, r_optimizer, r_state = _fresh()
    model_state, optimizer_state = get_state_dict(resumed, r_optimizer)
    loaded = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(loaded, checkpoint_id=directory)
    set_state_dict(
        resumed,
        r_optimizer,
        model_state_dict=loaded["model"],
        optim_state_dict=loaded["optimizer"],
    )
    r_state.load_state_dict(torch.load(f"{directory}/hook{rank}.pt", weights_only=True))
    run_steps(
        resumed, layouts[2:], K, rank, "gradvac", optimizer=r_optimizer, state=r_state, start=2
    )
    return (
        saved_hook,
        [p.to_local().clone() for p in model.parameters()],
        [p.to_local().clone() for p in resumed.parameters()],
        r_state.step,
    )


def test_a_resumed_plain_torch_fsdp_run_continues_exactly(tmp_path):
    for saved, straight, resumed, step in run_distributed(_straight_and_resumed, 2, str(tmp_path)):
        assert saved["version"] == 2 and saved["step"] == 2 and saved["world_size"] == 2
        assert saved["options"]["aggregator"] == "gradvac"
        assert saved["options"]["granularity"] == "parameter"
        assert saved["layout_extra"] == {"fsdp_units": ["(root)", "hidden", "embed"]}
        assert saved["aggregator_state"]["state"]  # GradVac's per-group targets
        assert step == 4
        for p, q in zip(straight, resumed):
            assert torch.equal(p, q)
