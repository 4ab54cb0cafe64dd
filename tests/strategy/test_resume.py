"""Checkpoints hold the hook's state: a resumed run continues exactly as an uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_bmoo.strategy import CHECKPOINT_KEY, SAMPLER_CHECKPOINT_KEY, BucketMOOStrategy

from .helpers import assert_params_equal, fit
from .models import LanguageData, TinyModel

STEPS_PER_EPOCH = 3


def _run(out_dir, aggregator, granularity, K, num_workers=0, **kwargs):
    # Small buckets: several of them, which DDP re-splits after the first backward of a run.
    strategy = BucketMOOStrategy(
        aggregator, granularity=granularity, seed=7, start_method="fork", bucket_cap_mb=0.001
    )
    return fit(
        out_dir,
        strategy,
        model=TinyModel(momentum=0.9),
        data=LanguageData(
            slots_per_rank=K, steps_per_epoch=STEPS_PER_EPOCH, num_workers=num_workers
        ),
        accumulate_grad_batches=K,
        max_steps=-1,
        max_epochs=2,
        **kwargs,
    )


def _straight_then_resumed(tmp_path, aggregator, granularity, K):
    checkpoints = tmp_path / "ckpt"
    straight = _run(
        tmp_path / "straight",
        aggregator,
        granularity,
        K,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(checkpoints, filename="{epoch}", save_top_k=-1)],
    )
    first_half = checkpoints / "epoch=0.ckpt"
    resumed = _run(tmp_path / "resumed", aggregator, granularity, K, ckpt_path=str(first_half))
    saved = torch.load(first_half, weights_only=True)[CHECKPOINT_KEY]
    return straight, resumed, saved


@pytest.mark.parametrize(
    ("aggregator", "granularity"), [("gradvac", "bucket"), ("pcgrad", "parameter")]
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, aggregator, granularity):
    straight, resumed, saved = _straight_then_resumed(tmp_path, aggregator, granularity, K=2)
    assert saved["options"]["aggregator"] == aggregator
    assert saved["options"]["granularity"] == granularity
    assert saved["step"] == STEPS_PER_EPOCH
    assert (saved["options"]["slots_per_rank"], saved["world_size"]) == (2, 2)
    assert saved["layout_extra"] == {"bucket_cap_bytes": 1048}
    assert resumed[0]["hook_step"] == straight[0]["hook_step"] == 2 * STEPS_PER_EPOCH
    assert resumed[0]["layouts"] == straight[0]["layouts"][STEPS_PER_EPOCH:]
    assert_params_equal(resumed[0]["params"], straight[0]["params"])
    assert_params_equal(resumed[0]["params"], resumed[1]["params"])


def test_resume_with_one_slot_and_out_of_order_parameters_is_not_exact(tmp_path):
    """Known limitation, kept visible: with K = 1 the first step of every run (a resumed one
    included) is solved on DDP's initial buckets (reverse registration order), later steps on
    the buckets DDP rebuilds in gradient order. This model registers its layers out of order,
    so the first resumed step's groups, and PCGrad's per-group seeds, differ."""
    straight, resumed, _ = _straight_then_resumed(tmp_path, "pcgrad", "bucket", K=1)
    assert straight[0]["groups"][0] != straight[0]["groups"][1]  # DDP rebuilt its buckets
    assert resumed[0]["groups"][0] == straight[0]["groups"][0]  # resumed on the initial ones
    assert resumed[0]["groups"][1:] == straight[0]["groups"][STEPS_PER_EPOCH + 1 :]
    if all(torch.equal(p, q) for p, q in zip(resumed[0]["params"], straight[0]["params"])):
        pytest.fail("The resumed run is now exact: turn this into an equality test.")
    pytest.xfail("first resumed step solved on DDP's initial buckets")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_mid_epoch_resume_continues_the_sampler_where_it_stopped(tmp_path, num_workers):
    """The sampler is built in train_dataloader(), after the checkpoint was loaded: the strategy
    keeps its saved state until the dataloader exists. With workers the DataLoader fetches
    ahead, so the position saved is the loop's count of consumed batches."""
    checkpoints = tmp_path / "ckpt"
    straight = _run(
        tmp_path / "straight",
        "gradvac",
        "bucket",
        2,
        num_workers,
        enable_checkpointing=True,
        callbacks=[
            ModelCheckpoint(checkpoints, filename="{step}", every_n_train_steps=2, save_top_k=-1)
        ],
    )
    middle = checkpoints / "step=4.ckpt"  # one step into the second epoch
    saved = torch.load(middle, weights_only=True)[SAMPLER_CHECKPOINT_KEY]
    assert (saved["epoch"], saved["position"]) == (1, 2)  # 2 batches = 1 step of K = 2
    resumed = _run(tmp_path / "resumed", "gradvac", "bucket", 2, num_workers, ckpt_path=str(middle))
    assert resumed[0]["layouts"] == straight[0]["layouts"][4:]
    assert_params_equal(resumed[0]["params"], straight[0]["params"])
    assert_params_equal(resumed[1]["params"], straight[1]["params"])
