"""BucketMOOFSDPStrategy: FSDP2 under Lightning, with the comm on every unit."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import MixedPrecisionPolicy

from lightning_bmoo import BucketMOOFSDPStrategy
from lightning_bmoo.strategy import CHECKPOINT_KEY, SAMPLER_CHECKPOINT_KEY

from ..distributed import RemoteError, run_distributed
from ..strategy.models import LanguageData
from .fits import FullMeshModel, ShardedTinyModel, fit, same_shards

ROOT = Path(__file__).resolve().parents[2]

BF16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def _fit(tmp_path, name, **spec):
    return run_distributed(fit, 2, str(tmp_path / name), spec)


@pytest.mark.parametrize(
    ("K", "policy"), [(1, None), (2, None), (2, BF16)], ids=["K1", "K2", "bf16"]
)
def test_mean_equals_lightnings_fsdp2_and_the_comm_sees_every_slot(tmp_path, K, policy):
    """Lightning reduce-scatters every accumulated microbatch under FSDP (it blocks sync for
    DDP only): the comm must see, and keep apart, each of the K slots."""
    ours = _fit(
        tmp_path,
        "ours",
        strategy=lambda: BucketMOOFSDPStrategy("mean"),
        model=ShardedTinyModel(policy),
        data=LanguageData(slots_per_rank=K),
        accumulate_grad_batches=K,
    )
    plain = _fit(
        tmp_path,
        "plain",
        strategy=lambda: ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
        model=ShardedTinyModel(policy),
        data=LanguageData(slots_per_rank=K),
        accumulate_grad_batches=K,
    )
    for rank, other in zip(ours, plain):
        assert rank["hook_step"] == rank["global_step"] == 4
        assert rank["slots_per_rank"] == K
        assert rank["layouts"] == rank["expected"]  # the sampler's schedule, every slot
        assert all(len(set(layout)) == 2 * K for layout in rank["layouts"])
        assert sorted(rank["groups"][0]) == ["net", "net.embed", "net.hidden"]  # one per unit
        same_shards(rank["params"], other["params"], atol=1e-6)


STEPS_PER_EPOCH = 3


def _resumable(tmp_path, name, **spec):
    return _fit(
        tmp_path,
        name,
        strategy=lambda: BucketMOOFSDPStrategy("gradvac", granularity="parameter", seed=7),
        model=ShardedTinyModel(momentum=0.9),
        data=LanguageData(slots_per_rank=2, steps_per_epoch=STEPS_PER_EPOCH),
        accumulate_grad_batches=2,
        max_steps=-1,
        max_epochs=2,
        **spec,
    )


def test_a_resumed_fit_equals_the_uninterrupted_one(tmp_path):
    checkpoints = tmp_path / "ckpt"
    straight = _resumable(
        tmp_path,
        "straight",
        enable_checkpointing=True,
        callbacks=lambda: [
            ModelCheckpoint(checkpoints, filename="{step}", every_n_train_steps=2, save_top_k=-1)
        ],
    )
    middle = checkpoints / "step=4.ckpt"  # a distributed checkpoint: a folder of shards
    saved = torch.load(middle / "meta.pt", weights_only=True)
    hook, sampler = saved[CHECKPOINT_KEY], saved[SAMPLER_CHECKPOINT_KEY]
    assert hook["step"] == 4 and hook["options"]["aggregator"] == "gradvac"
    assert hook["layout_extra"] == {"fsdp_units": ["net", "net.hidden", "net.embed"]}
    assert hook["aggregator_state"]["state"]
    assert (sampler["epoch"], sampler["position"]) == (1, 2)  # 2 batches into epoch 1
    resumed = _resumable(tmp_path, "resumed", ckpt_path=str(middle))
    for rank, other in zip(resumed, straight):
        assert rank["hook_step"] == other["hook_step"] == 2 * STEPS_PER_EPOCH
        assert rank["layouts"] == other["layouts"][4:]
        same_shards(rank["params"], other["params"])


def test_strategy_by_name_with_lightnings_launcher_trains_and_exits_cleanly(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.fsdp.launch_fsdp", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "terminate called" not in done.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for rank in ranks:
        assert rank["hook_step"] == rank["global_step"] == 3
        assert rank["layouts"] == rank["expected"]


def test_the_mesh_and_the_comm_use_the_strategys_timeout(tmp_path):
    """torch gives mesh groups its 30-minute default: a stalled rank would hang FSDP for that
    long. (The default group of these forked ranks has torch's default timeout.)"""
    ranks = _fit(
        tmp_path,
        "probe",
        strategy=lambda: BucketMOOFSDPStrategy(timeout=timedelta(seconds=77)),
        max_steps=1,
    )
    for rank in ranks:
        assert rank["timeouts"] == [timedelta(seconds=77)] * 3


@pytest.mark.parametrize(
    ("spec", "devices", "message"),
    [
        ({"model": FullMeshModel()}, 2, "a 2-D mesh \\(HSDP\\).*device_mesh\\['data_parallel'\\]"),
        ({}, 1, "single rank.*register_bucket_moo_hook"),
        (
            {"strategy": lambda: BucketMOOFSDPStrategy(slots_per_rank=2)},
            2,
            "slots_per_rank=2\\) disagrees with Trainer\\(accumulate_grad_batches=1\\)",
        ),
    ],
    ids=["2-D mesh", "one device", "slots"],
)
def test_unsupported_setups_fail_before_the_first_step(tmp_path, spec, devices, message):
    spec = {"strategy": BucketMOOFSDPStrategy, **spec}
    with pytest.raises(RemoteError, match=message):
        run_distributed(fit, devices, str(tmp_path), spec)
