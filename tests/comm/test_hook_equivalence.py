"""The hook's update against plain DDP, between transports, and against explicit gradients."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import available_aggregators
from lightning_bmoo.comm.transports import _BROADCAST_MAX_RANKS

from ..distributed import run_distributed
from .workload import train


def _mean_vs_ddp(rank, world_size, K, transport, granularity):
    plain = train(rank, world_size, K=K, aggregator=None, steps=3)
    moo = train(
        rank,
        world_size,
        K=K,
        aggregator="mean",
        transport=transport,
        granularity=granularity,
        steps=3,
    )
    return plain["params"], moo["params"]


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("transport", ["sharded", "gather"])
def test_mean_with_balanced_slots_equals_plain_ddp(K, transport):
    # With K = 2, DDP rebuilds its buckets between the two slots of step 0 (the workload's
    # MLP registers its layers in the opposite order of use): the stash must survive that.
    for plain, moo in run_distributed(_mean_vs_ddp, 2, K, transport, "bucket"):
        for p, q in zip(plain, moo):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def _transports(rank, world_size, K, names):
    out = {}
    for name in names:
        for granularity in ("bucket", "parameter", "global"):
            for transport in ("sharded", "gather"):
                result = train(
                    rank,
                    world_size,
                    K=K,
                    aggregator=name,
                    transport=transport,
                    granularity=granularity,
                    steps=2,
                )
                out[name, granularity, transport] = result["params"]
    return out


@pytest.mark.parametrize(("world_size", "K"), [(2, 1), (2, 2), (3, 1), (3, 2)])
def test_gather_and_sharded_give_the_same_update(world_size, K):
    names = available_aggregators()
    results = run_distributed(_transports, world_size, K, names)
    for name in names:
        for granularity in ("bucket", "parameter", "global"):
            sharded = results[0][name, granularity, "sharded"]
            gather = results[0][name, granularity, "gather"]
            for p, q in zip(sharded, gather):
                torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name} {granularity}")


def _first_step(rank, world_size, K, layout, granularity, name):
    return train(
        rank, world_size, K=K, layout=layout, aggregator=name, granularity=granularity, steps=1
    )


def _explicit_update(layout, K, groups, name):
    """Applies the aggregator to per-language gradients computed one slot at a time."""
    from lightning_bmoo.aggregators import get_aggregator

    from .workload import loss_of, make_model

    model = make_model()
    names = [n for n, _ in model.named_parameters()]
    slot_rows = []
    for s, language in enumerate(layout):
        model.zero_grad()
        loss_of(model, language, 0, s % K).backward()
        slot_rows.append(
            {n: p.grad.detach().double().flatten().clone() for n, p in model.named_parameters()}
        )
    tasks = sorted(set(layout))
    rows = {
        n: torch.stack(
            [
                torch.stack([r[n] for r, lang in zip(slot_rows, layout) if lang == t]).mean(0)
                for t in tasks
            ]
        )
        for n in names
    }
    update, gramians = {}, []
    for group in groups:
        G = torch.cat([rows[n] for n in group.param_names], dim=1)
        gram = G @ G.T
        w = get_aggregator(name)(gram, tasks=tasks, key=group.key)
        d = w @ G
        gramians.append(gram)
        offset = 0
        for n in group.param_names:
            size = rows[n].shape[1]
            update[n] = d[offset : offset + size]
            offset += size
    return update, gramians


@pytest.mark.parametrize("granularity", ["bucket", "parameter", "global"])
@pytest.mark.parametrize(
    ("world_size", "K", "layout"),
    [
        (2, 1, ["en", "ru"]),
        (3, 1, ["en", "ru", "en"]),  # two slots of one language are averaged
        (2, 2, ["ar", "en", "fr", "ar"]),
    ],
)
@pytest.mark.parametrize("name", ["mgda", "upgrad", "mean"])
def test_update_equals_explicit_per_language_computation(granularity, world_size, K, layout, name):
    result = run_distributed(_first_step, world_size, K, lambda step: layout, granularity, name)[0]
    stats = result["stats"][0]
    assert stats.slots == layout and stats.tasks == sorted(set(layout))
    groups = [stats.global_group] if granularity == "global" else stats.groups
    expected, gramians = _explicit_update(layout, K, groups, name)
    from .workload import make_model

    for (n, _), grad in zip(make_model().named_parameters(), result["grads"][0]):
        torch.testing.assert_close(grad.double().flatten(), expected[n], rtol=1e-4, atol=1e-6)
    for group, gram in zip(groups, gramians):
        torch.testing.assert_close(group.gramian, gram, rtol=1e-4, atol=1e-8)


def _uneven(rank, world_size, K):
    from .workload import OddMLP

    def make():
        torch.manual_seed(0)
        return OddMLP()

    out = {}
    for name, transport in [
        (None, "-"),
        ("mean", "sharded"),
        ("mgda", "sharded"),
        ("mgda", "gather"),
    ]:
        options = {} if name is None else {"transport": transport}
        result = train(
            rank, world_size, K=K, aggregator=name, make=make, bucket_cap_mb=1e-4, **options
        )
        out[name, transport] = result["params"]
    return out


@pytest.mark.parametrize(
    ("world_size", "K"), [(2, 1), (3, 1), (3, 2), (_BROADCAST_MAX_RANKS + 1, 1)]
)
def test_sharded_is_exact_when_buckets_are_no_multiple_of_the_world_size(world_size, K):
    # Buckets of 29, 35 and 63 elements: the last rank's shard carries the left-over tail.
    # Up to _BROADCAST_MAX_RANKS ranks every rank broadcasts its combined shard; beyond, the
    # equal shards are all-gathered and the tail broadcast.
    ranks = run_distributed(_uneven, world_size, K)
    for results in ranks:
        for p, q in zip(results[None, "-"], results["mean", "sharded"]):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
        for p, q in zip(results["mgda", "sharded"], results["mgda", "gather"]):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for p, q in zip(ranks[0]["mgda", "sharded"], ranks[-1]["mgda", "sharded"]):
        assert torch.equal(p, q)
