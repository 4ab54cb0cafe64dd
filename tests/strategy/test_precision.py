"""AMP: bf16-mixed on CPU, and 16-mixed with a GradScaler that skips non-finite steps."""

from __future__ import annotations

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_bmoo.data import LanguageBatchSampler
from lightning_bmoo.strategy import BucketMOOStrategy

from .helpers import assert_params_equal, fit
from .models import LanguageData, TinyModel, language_datasets


def test_bf16_mixed_trains_and_keeps_replicas_identical(tmp_path):
    ranks = fit(
        tmp_path,
        BucketMOOStrategy("pcgrad", start_method="fork"),
        data=LanguageData(slots_per_rank=2),
        accumulate_grad_batches=2,
        precision="bf16-mixed",
    )
    assert ranks[0]["hook_step"] == 4
    assert ranks[0]["nonfinite"] == "drop"
    assert all(torch.isfinite(p).all() for p in ranks[0]["params"])
    assert_params_equal(ranks[0]["params"], ranks[1]["params"])


def test_fp16_grad_scaler_skips_a_step_with_an_infinite_language(tmp_path):
    # Lightning turns precision="16-mixed" on CPU into bf16-mixed; the plugin keeps fp16 and a
    # CPU GradScaler, as on a GPU.
    sampler, _ = LanguageBatchSampler.from_datasets(
        language_datasets(), 4, probabilities="uniform", rank=0, world_size=2
    )
    language = sampler.step_slots(2)[1]  # rank 1's batch at step 2
    ranks = fit(
        tmp_path,
        BucketMOOStrategy("mgda", start_method="fork"),
        model=TinyModel(inf_at=(2, language)),
        data=LanguageData(slots_per_rank=1),
        plugins=[MixedPrecision("16-mixed", "cpu")],
        max_steps=5,
        snapshots=True,
    )
    record = ranks[0]
    assert record["nonfinite"] == "propagate"  # chosen because the plugin has a GradScaler
    assert record["layouts"][2] == sampler.step_slots(2)
    scales, snapshots = record["scales"], record["snapshots"]
    assert scales[2] == scales[1] / 2  # the scaler saw inf and backed off...
    assert_params_equal(snapshots[2], snapshots[1])  # ...and skipped the step
    assert not any(torch.equal(p, q) for p, q in zip(snapshots[3], snapshots[2]))
    assert all(torch.isfinite(p).all() for p in record["params"])
    assert_params_equal(record["params"], ranks[1]["params"])
