"""The DDP hook on CUDA with NCCL: rows and shards on NCCL, slot messages and Gramians on the
gloo side channel (``backend="nccl"`` carries no CPU tensors), fp32 and bf16 buckets.

Needs two CUDA devices (NCCL cannot put two ranks on one device): skipped elsewhere. The
ranks are spawned (CUDA does not survive fork) and use ``init_process_group("nccl")``, as
Lightning and most torchrun scripts do.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import register_bucket_moo_hook

from ..distributed import RemoteError, free_port
from .workload import loss_of, make_model, round_robin

pytestmark = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL): run on a GPU machine"
)

STEPS = 3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _train(rank: int, K: int, aggregator: str | None, transport: str, dtype: torch.dtype):
    model = make_model(dtype=dtype).cuda()
    ddp = DDP(model, device_ids=[rank], bucket_cap_mb=0.002)
    state = None
    if aggregator is not None:
        state = register_bucket_moo_hook(ddp, aggregator, slots_per_rank=K, transport=transport)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    layout = round_robin(2, K, ("de", "en"))  # every language in K slots a step: balanced
    grads, weights = [], []
    for step in range(STEPS):
        for k in range(K):
            language = layout(step)[rank * K + k]

            def module(x, ddp=ddp):
                return ddp(x.cuda()).float().cpu()

            value = loss_of(module, language, step, k, dtype) / K
            if state is None:
                value.backward()
            else:
                with state.slot(language):
                    value.backward()
        torch.cuda.synchronize()
        grads.append([p.grad.detach().float().cpu() for p in model.parameters()])
        if state is not None:
            weights.append([g.weights.tolist() for g in state.last_step.groups])
        opt.step()
        opt.zero_grad()
    return {"grads": grads, "weights": weights}


def _runs(rank: int) -> dict:
    out = {}
    for name, dtype in DTYPES.items():
        for K in (1, 2):
            out[name, K, None, "-"] = _train(rank, K, None, "-", dtype)
            for transport in ("sharded", "gather"):
                out[name, K, "mean", transport] = _train(rank, K, "mean", transport, dtype)
            out[name, K, "mgda", "sharded"] = _train(rank, K, "mgda", "sharded", dtype)
    return out


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        result = _runs(rank)
    except BaseException as error:
        result = RemoteError(f"rank {rank}: {error}\n{traceback.format_exc()}")
    torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(_worker, args=(2, free_port(), out_dir), nprocs=2, start_method="spawn")
        results = [
            torch.load(os.path.join(out_dir, f"{r}.pt"), weights_only=False) for r in range(2)
        ]
    for result in results:
        if isinstance(result, RemoteError):
            raise result
    return results


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
