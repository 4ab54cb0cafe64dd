"""The FSDP comm's updates: ``mean`` is FSDP2's default, the others a one-process reference.

Every configuration runs on W = 2 and W = 3 gloo ranks (W = 3 pads every shard), with
K = 1 and K = 2 slots per rank, at every granularity.
"""

from __future__ import annotations

import pytest
import torch

from ..comm.heads import expected_grads
from ..comm.heads import loss as heads_loss
from ..distributed import run_distributed
from .models import assembled, run_steps, sharded_heads, sharded_mlp

GRANULARITIES = ("bucket", "parameter", "global")

# Balanced steps (every language in as many slots), with repeated languages for K = 2.
BALANCED = {
    (2, 1): [["de", "en"], ["fr", "ru"]],
    (2, 2): [["de", "en", "fr", "ru"], ["en", "de", "de", "en"]],
    (3, 1): [["de", "en", "fr"], ["ru", "fr", "de"]],
    (3, 2): [["de", "en", "fr", "de", "en", "fr"], ["ru", "ru", "de", "de", "en", "en"]],
}
# Unbalanced steps on the heads model: some heads unused, some used by several slots.
UNBALANCED = {
    (2, 1): [["de", "en"], ["fr", "fr"]],
    (2, 2): [["de", "de", "en", "fr"], ["ru", "en", "en", "en"]],
    (3, 1): [["de", "de", "en"], ["fr", "ru", "en"]],
    (3, 2): [["de", "en", "en", "fr", "de", "de"], ["ru", "ru", "ru", "ru", "fr", "ru"]],
}
AGGREGATORS = ("mgda", "upgrad", "imtl_g")


def _everything(rank, world_size):
    out = {}
    for K in (1, 2):
        balanced = BALANCED[world_size, K]
        out["default", K] = run_steps(sharded_mlp(), balanced, K, rank, None)["grads"]
        for granularity in GRANULARITIES:
            run = run_steps(sharded_mlp(), balanced, K, rank, "mean", granularity=granularity)
            out["mean", K, granularity] = run["grads"]
            for aggregator in AGGREGATORS:
                run = run_steps(
                    sharded_heads(),
                    UNBALANCED[world_size, K],
                    K,
                    rank,
                    aggregator,
                    loss=heads_loss,
                    granularity=granularity,
                )
                solves = _solves(run["stats"])
                groups = [[(g.key, list(g.param_names)) for g in step] for step in solves]
                out[aggregator, K, granularity] = (run["grads"], groups)
    return out


def _solves(stats):
    # One group per solve: the global one, or the unit / parameter groups.
    return [[s.global_group] if s.global_group is not None else s.groups for s in stats]


@pytest.fixture(scope="module", params=[2, 3], ids=["W2", "W3"])
def ranks(request):
    return request.param, run_distributed(_everything, request.param)


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_mean_with_balanced_slots_equals_fsdp2_default(ranks, K, granularity):
    _, results = ranks
    ours = assembled([rank["mean", K, granularity] for rank in results])
    default = assembled([rank["default", K] for rank in results])
    for got, want in zip(ours, default):
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("aggregator", AGGREGATORS)
def test_update_equals_the_per_language_reference(ranks, aggregator, K, granularity):
    world_size, results = ranks
    grads = assembled([rank[aggregator, K, granularity][0] for rank in results])
    for rank in results:
        groups = rank[aggregator, K, granularity][1]
        for step, (layout, got, solves) in enumerate(zip(UNBALANCED[world_size, K], grads, groups)):
            if granularity == "parameter":
                assert all(len(names) == 1 for _, names in solves)
            expected = expected_grads(layout, step, K, solves, aggregator)
            for name, want in expected.items():
                where = f"W={world_size} K={K} {layout} {name}"
                # A head no slot used: FSDP2 (reduce_scatter_unused_params) gives it zeros.
                want = torch.zeros_like(got[name].double().flatten()) if want is None else want
                torch.testing.assert_close(
                    got[name].double().flatten(), want, rtol=1e-4, atol=1e-6, msg=where
                )
