"""Traffic, replica consistency, inactive tasks, non-finite policy, dtypes and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from lightning_bmoo.comm import BucketMOOState, register_bucket_moo_hook

from ..distributed import RemoteError, run_distributed
from .workload import loss_of, make_model, nan_for_ru_at_step_1, train


def _traffic(rank, world_size, K, transport):
    result = train(rank, world_size, K=K, aggregator="mgda", transport=transport, steps=2)
    numel = sum(p.numel() for p in result["params"])
    return result["stats"][-1], numel


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_traffic_is_an_all_reduce_and_gather_follows_its_formula(world_size):
    stats, numel = run_distributed(_traffic, world_size, 1, "sharded")[0]
    T, buckets, size = len(stats.tasks), len(stats.groups), 4
    all_reduce = 2 * (world_size - 1) / world_size * numel * size
    # On CPUs each rank broadcasts its combined shard (W collectives per bucket).
    bulk = stats.bytes_sent["all_to_all"] + stats.bytes_sent["broadcast"]
    # Shards are floor(n / W) elements, the last rank's longer by the n mod W < W elements
    # left over: exchange + broadcasts are at most an all-reduce's bytes on rank 0.
    assert all_reduce <= bulk <= 1.01 * all_reduce + buckets * world_size * size
    gramian_bytes = stats.bytes_sent["all_reduce"]
    assert gramian_bytes <= 2 * buckets * T * T * 8
    assert stats.collectives["all_to_all"] == buckets
    assert stats.collectives["broadcast"] == world_size * buckets
    assert "all_gather" not in stats.collectives
    # Bucket b - 2 is solved before bucket b's exchange starts (b - 1's Gramians are on their
    # way) and the combined shards are gathered in place: the hook never holds more than two
    # buckets beyond DDP's own.
    two_largest = sum(sorted(group.numel for group in stats.groups)[-2:]) * size
    assert 0 < stats.peak_extra_bytes <= two_largest

    stats, numel = run_distributed(_traffic, world_size, 2, "gather")[0]
    assert stats.bytes_sent["all_gather"] == (world_size - 1) * 2 * numel * size
    assert "all_to_all" not in stats.bytes_sent and "all_reduce" not in stats.bytes_sent


def _replicas(rank, world_size):
    return train(rank, world_size, K=1, aggregator="pcgrad", steps=50, lr=0.05)["params"]


def test_replicas_stay_bitwise_identical_with_a_stochastic_aggregator():
    ranks = run_distributed(_replicas, 3)
    for other in ranks[1:]:
        for p, q in zip(ranks[0], other):
            assert torch.equal(p, q)
    assert all(torch.isfinite(p).all() for p in ranks[0])


class TwoHeads(nn.Module):
    """A shared body and one head per language: each head's gradient is zero for the other."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.heads = nn.ModuleDict({"en": nn.Linear(16, 4), "ru": nn.Linear(16, 4)})

    def forward(self, x: torch.Tensor, language: str) -> torch.Tensor:
        return self.heads[language](torch.tanh(self.body(x)))


def _two_heads_loss(model, language, step, slot, dtype):
    from .workload import batch

    x, y = batch(language, step, slot)
    return ((model(x, language) - y) ** 2).mean()


def _inactive(rank, world_size):
    torch.manual_seed(0)
    return train(
        rank,
        world_size,
        aggregator="mgda",
        granularity="parameter",
        steps=1,
        make=TwoHeads,
        loss=_two_heads_loss,
        layout=lambda step: ["en", "ru"],
        find_unused_parameters=True,
    )


def test_a_task_with_a_zero_row_takes_no_part_in_that_groups_solve():
    result = run_distributed(_inactive, 2)[0]
    stats = result["stats"][0]
    by_key = {g.key: g for g in stats.groups}
    head = by_key["heads.en.weight"]
    assert head.active.tolist() == [True, False] and head.weights.tolist() == [1.0, 0.0]
    assert by_key["body.weight"].active.tolist() == [True, True]
    # MGDA over {g_en, 0} would return 0: the head would never learn. Here it gets g_en.
    torch.manual_seed(0)
    model = TwoHeads()
    _two_heads_loss(model, "en", 0, 0, None).backward()
    names = [n for n, _ in model.named_parameters()]
    grad = result["grads"][0][names.index("heads.en.weight")]
    torch.testing.assert_close(grad, model.heads["en"].weight.grad)


def test_nonfinite_drop_removes_the_language_and_warns():
    import warnings

    def run(rank, world_size):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(
                rank,
                world_size,
                aggregator="mgda",
                steps=2,
                nonfinite="drop",
                loss=nan_for_ru_at_step_1,
                layout=lambda step: ["en", "ru"],
            )
        return result, [str(w.message) for w in caught]

    (result, messages), _ = run_distributed(run, 2)
    step1 = result["stats"][1]
    assert step1.dropped == {"ru"}
    assert all(g.weights.tolist() == [1.0, 0.0] for g in step1.groups)
    assert all(torch.isfinite(p).all() for p in result["params"])
    assert any("non-finite gradients for ['ru']" in m for m in messages)


def test_nonfinite_propagate_lets_nan_reach_the_gradients():
    def run(rank, world_size):
        return train(
            rank,
            world_size,
            aggregator="mgda",
            steps=2,
            nonfinite="propagate",
            loss=nan_for_ru_at_step_1,
            layout=lambda step: ["en", "ru"],
        )

    result = run_distributed(run, 2)[0]
    assert all(torch.isfinite(g).all() for g in result["grads"][0])
    assert all(torch.isnan(g).any() for g in result["grads"][1])
    assert result["stats"][1].dropped == set()


def _dtype(rank, world_size, dtype, transport):
    return train(
        rank, world_size, K=2, aggregator="mgda", transport=transport, dtype=dtype, steps=2, lr=0.05
    )["params"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_buckets_match_float32(dtype):
    reference = run_distributed(_dtype, 2, torch.float32, "sharded")[0]
    for transport in ("sharded", "gather"):
        low = run_distributed(_dtype, 2, dtype, transport)[0]
        for p, q in zip(low, reference):
            assert p.dtype == dtype
            torch.testing.assert_close(p.float(), q, rtol=0.05, atol=0.02)


def test_bad_configuration_fails_fast_with_the_valid_choices():
    def run(rank, world_size):
        ddp = DDP(make_model())
        errors = []
        for (options,) in [
            ({"transport": "ring"},),
            ({"granularity": "layer"},),
            ({"aggregator": "mgdaa"},),
            ({"nonfinite": "ignore"},),
            ({"slots_per_rank": 0},),
        ]:
            try:
                register_bucket_moo_hook(ddp, **options)
            except ValueError as error:
                errors.append(str(error))
        return errors

    errors = run_distributed(run, 2)[0]
    assert "Unknown transport 'ring'. Valid values: sharded, gather." in errors[0]
    assert "Unknown granularity 'layer'. Valid values: bucket, parameter, global." in errors[1]
    assert "Unknown aggregator 'mgdaa'" in errors[2] and "upgrad" in errors[2]
    assert "nonfinite policy 'ignore'" in errors[3]
    assert "slots_per_rank must be an int >= 1" in errors[4]


def test_backward_without_a_language_is_a_clear_error():
    def run(rank, world_size):
        ddp = DDP(make_model())
        register_bucket_moo_hook(ddp)
        loss_of(ddp, "en", 0, 0).backward()

    with pytest.raises(RemoteError, match=r"without a language: call state.set_slot"):
        run_distributed(run, 2)


def test_ranks_with_different_slot_counts_fail_together():
    def run(rank, world_size):
        ddp = DDP(make_model())
        state = register_bucket_moo_hook(ddp, slots_per_rank=rank + 1)
        for k in range(rank + 1):
            with state.slot("en" if rank else "de"):
                loss_of(ddp, "en", 0, k).backward()

    with pytest.raises(RemoteError, match=r"disagree on the number of slots.*\[1, 2\]"):
        run_distributed(run, 2)


def test_registering_without_distributed_or_on_a_plain_module_is_a_clear_error():
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="not initialised"):
        BucketMOOState("mgda")
    with pytest.raises(TypeError, match="needs a DistributedDataParallel model"):
        register_bucket_moo_hook(make_model())


def test_one_slot_in_the_whole_run_warns_that_moo_is_a_no_op():
    def run(rank, world_size):
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            register_bucket_moo_hook(DDP(make_model()))
        return [str(w.message) for w in caught]

    assert any("reduces to plain SGD" in m for m in run_distributed(run, 1)[0])


TORCHRUN_SCRIPT = """
import sys

import torch.distributed as dist

sys.path.insert(0, ROOT)
from tests.comm.workload import train  # noqa: E402

dist.init_process_group("gloo")
train(dist.get_rank(), dist.get_world_size(), aggregator="mgda", granularity="global", K=2)
dist.barrier()
dist.destroy_process_group()
print("FINISHED" if not dist.is_initialized() else "STILL-INITIALISED", flush=True)
"""


def test_a_plain_torchrun_script_trains_and_exits_cleanly(tmp_path):
    from ..distributed import free_port

    root = str(Path(__file__).parents[2])
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT.replace("ROOT", repr(root)))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(free_port()),
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("FINISHED") == 2
    assert "terminate called" not in done.stderr
