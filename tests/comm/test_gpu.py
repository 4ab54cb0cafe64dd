"""The DDP hook on CUDA with NCCL: rows and shards on NCCL, slot messages and Gramians on the
gloo side channel (``backend="nccl"`` carries no CPU tensors), fp32 and bf16 buckets.

Needs two CUDA devices (NCCL cannot put two ranks on one device): skipped elsewhere. The
ranks are spawned (CUDA does not survive fork) and use ``init_process_group("nccl")``, as
Lightning and most torchrun scripts do.
"""

from __future__ import annotations

import pytest
import torch

from ..distributed import run_distributed
from .workload import round_robin, train

pytestmark = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL): run on a GPU machine"
)

STEPS = 3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _train(rank: int, K: int, aggregator: str | None, transport: str, dtype: torch.dtype):
    layout = round_robin(2, K, ("de", "en"))  # every language in K slots a step: balanced
    options = {} if aggregator is None else {"transport": transport}
    run = train(
        rank, 2, steps=STEPS, K=K, layout=layout, aggregator=aggregator, dtype=dtype,
        device="cuda", **options,
    )  # fmt: skip
    weights = [[g.weights.tolist() for g in stats.groups] for stats in run["stats"]]
    return {"grads": [[g.float() for g in step] for step in run["grads"]], "weights": weights}


def _runs(rank: int, world_size: int) -> dict:
    out = {}
    for name, dtype in DTYPES.items():
        for K in (1, 2):
            out[name, K, None, "-"] = _train(rank, K, None, "-", dtype)
            for transport in ("sharded", "gather"):
                out[name, K, "mean", transport] = _train(rank, K, "mean", transport, dtype)
            out[name, K, "mgda", "sharded"] = _train(rank, K, "mgda", "sharded", dtype)
    return out


@pytest.fixture(scope="module")
def ranks():
    return run_distributed(_runs, 2, start_method="spawn", backend="nccl")


@pytest.mark.parametrize("transport", ["sharded", "gather"])
@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("precision", list(DTYPES))
def test_mean_with_balanced_slots_equals_ddp_on_nccl(ranks, precision, K, transport):
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if precision == "bf16" else {}
    for rank in ranks:
        ours = rank[precision, K, "mean", transport]["grads"]
        plain = rank[precision, K, None, "-"]["grads"]
        for got_step, want_step in zip(ours, plain):
            for got, want in zip(got_step, want_step):
                torch.testing.assert_close(got, want, **tolerance)


@pytest.mark.parametrize("precision", list(DTYPES))
@pytest.mark.parametrize("K", [1, 2])
def test_mgda_ranks_agree_on_weights_and_gradients_on_nccl(ranks, precision, K):
    first, second = (r[precision, K, "mgda", "sharded"] for r in ranks)
    assert first["weights"] == second["weights"]
    for a, b in zip(first["grads"], second["grads"]):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
