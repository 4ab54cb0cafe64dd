"""The comm on CUDA with NCCL: its collectives on FSDP's reduce-scatter stream, its control
messages on a gloo side group (``backend="nccl"`` carries no CPU tensors).

Needs two CUDA devices (NCCL cannot put two ranks on one device): skipped elsewhere. The
ranks are spawned (CUDA does not survive fork) and use ``init_process_group("nccl")``, as
Lightning and most torchrun scripts do.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from ..comm.heads import expected_grads
from ..comm.workload import batch
from ..distributed import run_distributed
from .models import assembled, run_steps, sharded_heads, sharded_mlp

pytestmark = pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL): run on a GPU machine"
)

LAYOUTS = [["de", "en", "fr", "ru"], ["en", "de", "de", "en"]]
HEAD_LAYOUTS = [["de", "de", "en", "fr"], ["ru", "en", "en", "en"]]
K = 2


def _mlp_loss(model, language, step, slot):
    x, y = batch(language, step, slot)
    return ((model(x.cuda()) - y.cuda()) ** 2).mean()


def _heads_loss(model, language, step, slot):
    x, y = batch(language, step, slot)
    return ((model(x.cuda(), language) - y.cuda()) ** 2).mean()


def _on_cpu(grads):
    return [{n: None if g is None else g.cpu() for n, g in step.items()} for step in grads]


def _runs(rank, world_size):
    out = {}
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for name, policy in (("fp32", None), ("bf16", bf16)):
        for aggregator, granularity in ((None, None), ("mean", "bucket"), ("mean", "global")):
            options = {} if granularity is None else {"granularity": granularity}
            model = sharded_mlp(policy)
            run = run_steps(model, LAYOUTS, K, rank, aggregator, loss=_mlp_loss, **options)
            out[name, aggregator, granularity] = _on_cpu(run["grads"])
    run = run_steps(sharded_heads(), HEAD_LAYOUTS, K, rank, "mgda", loss=_heads_loss)
    groups = [[(g.key, list(g.param_names)) for g in s.groups] for s in run["stats"]]
    out["mgda"] = (_on_cpu(run["grads"]), groups)
    return out


@pytest.fixture(scope="module")
def ranks():
    return run_distributed(_runs, 2, start_method="spawn", backend="nccl")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("granularity", ["bucket", "global"])
def test_mean_equals_fsdp2_default_on_nccl(ranks, precision, granularity):
    ours = assembled([r[precision, "mean", granularity] for r in ranks])
    default = assembled([r[precision, None, None] for r in ranks])
    for got, want in zip(ours, default):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_mgda_equals_the_per_language_reference_on_nccl(ranks):
    grads = assembled([r["mgda"][0] for r in ranks])
    for step, (layout, got, solves) in enumerate(zip(HEAD_LAYOUTS, grads, ranks[0]["mgda"][1])):
        for name, want in expected_grads(layout, step, K, solves, "mgda").items():
            value = got[name].double().flatten()
            want = torch.zeros_like(value) if want is None else want
            torch.testing.assert_close(value, want, rtol=1e-4, atol=1e-6, msg=name)
