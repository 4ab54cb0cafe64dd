"""Every rank solves the same problem: 50 PCGrad steps leave one consistent model.

Under FSDP each rank updates only its shard, so a rank that drew another PCGrad order would
silently mix two different updates into one model. The ranks' recorded Gramians and weights
must agree bitwise at every step, and the gathered parameters too.
"""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.callbacks.figures import interference

from ..comm.workload import round_robin
from ..distributed import run_distributed
from .models import run_steps, sharded_mlp

STEPS = 50


def _train(rank, world_size, K):
    model = sharded_mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    initial = [p.full_tensor().clone() for p in model.parameters()]
    layouts = [round_robin(world_size, K)(step) for step in range(STEPS)]
    run = run_steps(model, layouts, K, rank, "pcgrad", optimizer=optimizer, seed=3)
    solves = [[(g.gramian, g.weights) for g in stats.groups] for stats in run["stats"]]
    figures = interference(run["stats"][-1])  # what InterferenceMonitor draws
    return initial, [p.full_tensor() for p in model.parameters()], solves, figures


@pytest.mark.parametrize(("world_size", "K"), [(2, 2), (3, 1)])
def test_ranks_solve_identically_and_gather_one_model_after_50_pcgrad_steps(world_size, K):
    ranks = run_distributed(_train, world_size, K)
    initial, params, solves, figures = ranks[0]
    assert len(solves) == STEPS and all(len(step) == 3 for step in solves)  # three units
    for _, other_params, other_solves, _ in ranks[1:]:
        for p, q in zip(params, other_params):
            assert torch.equal(p, q)
        for step, other in zip(solves, other_solves):
            for (gram, w), (gram2, w2) in zip(step, other):
                assert torch.equal(gram, gram2) and torch.equal(w, w2)
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, q) for p, q in zip(params, initial))
    T = len(figures.tasks)
    assert figures.cos.shape == (T, T) and torch.isfinite(figures.cos).all()
    # PCGrad's projections changed the weights away from the plain average somewhere.
    assert any(not torch.allclose(w, w.mean().expand_as(w)) for step in solves for _, w in step)
