"""FSDP2 mixed precision: bf16 parameters, fp32 or bf16 reduction, float64 Gramians."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy

from ..distributed import run_distributed
from .models import assembled, run_steps, sharded_mlp

LAYOUTS = [["de", "en", "fr", "ru"], ["en", "en", "de", "de"]]


def _runs(rank, world_size, reduce_dtype):
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype)
    out = {}
    for aggregator in (None, "mean", "mgda"):
        run = run_steps(sharded_mlp(policy), LAYOUTS, 2, rank, aggregator)
        out[aggregator] = (run["grads"], run["stats"])
    return out


@pytest.mark.parametrize(
    ("reduce_dtype", "rtol"), [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"]
)
def test_bf16_parameters_mean_equals_fsdp2_default_and_gramians_are_float64(reduce_dtype, rtol):
    ranks = run_distributed(_runs, 2, reduce_dtype)
    default = assembled([r[None][0] for r in ranks])
    mean = assembled([r["mean"][0] for r in ranks])
    for got, want in zip(mean, default):
        for name in want:
            assert got[name].dtype == torch.float32  # sharded gradients keep the fp32 params' dtype
            scale = want[name].abs().max()
            torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=rtol * scale)
    for stats in ranks[0]["mgda"][1]:
        for group in stats.groups:
            assert group.gramian.dtype == torch.float64
            assert torch.isfinite(group.gramian).all() and torch.isfinite(group.weights).all()
            assert (group.gramian.diagonal() > 0).all()
