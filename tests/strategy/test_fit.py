"""Fits on two forked gloo ranks: the hook runs, sync stays on, replicas agree."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from lightning_bmoo.strategy import BucketMOOStrategy

from .helpers import assert_params_equal, fit
from .models import LanguageData, ManualModel


@pytest.mark.parametrize("K", [1, 2])
def test_mean_reproduces_ddp_and_the_hook_runs_every_slot(tmp_path, K):
    clip = {"gradient_clip_val": 0.5} if K == 2 else {}
    data = LanguageData(slots_per_rank=K)
    ours = fit(
        tmp_path / "bmoo",
        BucketMOOStrategy("mean", start_method="fork"),
        data=data,
        accumulate_grad_batches=K,
        **clip,
    )
    plain = fit(
        tmp_path / "ddp",
        DDPStrategy(start_method="fork"),
        data=LanguageData(slots_per_rank=K),
        accumulate_grad_batches=K,
        **clip,
    )
    for rank in ours:
        assert rank["comm_hook"] == "bucket_moo_hook"
        assert rank["hook_step"] == rank["global_step"] == 4
        assert rank["slots_per_rank"] == K
        # The language the strategy declared for each slot is the sampler's schedule.
        assert rank["layouts"] == rank["expected"]
        assert all(len(set(layout)) == 2 * K for layout in rank["layouts"])
    assert_params_equal(ours[0]["params"], plain[0]["params"], atol=1e-6)
    assert_params_equal(ours[0]["params"], ours[1]["params"])


@pytest.mark.parametrize(("aggregator", "K"), [("mgda", 1), ("pcgrad", 2)])
def test_replicas_stay_bitwise_identical(tmp_path, aggregator, K):
    ranks = fit(
        tmp_path,
        BucketMOOStrategy(aggregator, start_method="fork", bucket_cap_mb=0.001),
        data=LanguageData(slots_per_rank=K),
        accumulate_grad_batches=K,
        max_steps=8,
    )
    assert ranks[0]["hook_step"] == 8
    assert_params_equal(ranks[0]["params"], ranks[1]["params"])
    assert all(torch.isfinite(p).all() for p in ranks[0]["params"])


def test_manual_optimization_with_slots_per_rank_matches_automatic_ddp(tmp_path):
    manual = fit(
        tmp_path / "manual",
        BucketMOOStrategy("mean", slots_per_rank=2, start_method="fork"),
        model=ManualModel(slots=2),
        data=LanguageData(slots_per_rank=2),
    )
    plain = fit(
        tmp_path / "ddp",
        DDPStrategy(start_method="fork"),
        data=LanguageData(slots_per_rank=2),
        accumulate_grad_batches=2,
    )
    assert manual[0]["hook_step"] == manual[0]["global_step"] == 4
    assert manual[0]["layouts"] == manual[0]["expected"]
    assert_params_equal(manual[0]["params"], plain[0]["params"], atol=1e-6)


def test_single_device_runs_the_hook_over_its_slots_and_mean_matches_plain_training(tmp_path):
    ours = fit(
        tmp_path / "bmoo",
        BucketMOOStrategy("mean", start_method="fork"),
        devices=1,
        data=LanguageData(slots_per_rank=2),
        accumulate_grad_batches=2,
    )
    plain = fit(
        tmp_path / "plain",
        "auto",
        devices=1,
        data=LanguageData(slots_per_rank=2),
        accumulate_grad_batches=2,
    )
    assert ours[0]["comm_hook"] == "bucket_moo_hook"
    assert ours[0]["hook_step"] == 4
    assert all(len(set(layout)) == 2 for layout in ours[0]["layouts"])
    assert_params_equal(ours[0]["params"], plain[0]["params"], atol=1e-6)
