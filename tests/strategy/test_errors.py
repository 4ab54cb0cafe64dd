"""Misuse found while fitting fails early, on every rank, with the fix in the message."""

from __future__ import annotations

import pytest

from lightning_bmoo.strategy import BucketMOOStrategy

from .helpers import fit
from .models import LanguageData, ManualModel

pytestmark = pytest.mark.filterwarnings("ignore:Bucket MOO with one slot per step")


@pytest.mark.parametrize(
    ("data", "accumulate", "strategy_kwargs", "match"),
    [
        (LanguageData(mixed=True), 1, {}, r"mixes languages \['de', 'en', 'fr', 'ru'\]"),
        (LanguageData(world_size=2, rank=1), 1, {}, "rank 1 of world_size 2 but training runs"),
        (LanguageData(slots_per_rank=2), 1, {}, "accumulate_grad_batches=1.*slots_per_rank=2"),
        (LanguageData(slots_per_rank=2), 2, {"slots_per_rank": 3}, "disagrees with Trainer"),
        (LanguageData(plain_batches=3), 2, {}, "3 training batches, not a multiple of"),
    ],
    ids=["mixed", "world-size", "sampler-K", "strategy-K", "epoch-length"],
)
def test_fit_fails_early_with_the_fix(tmp_path, data, accumulate, strategy_kwargs, match):
    with pytest.raises(Exception, match=match):
        fit(
            tmp_path,
            BucketMOOStrategy("mgda", start_method="fork", **strategy_kwargs),
            devices=1,
            data=data,
            accumulate_grad_batches=accumulate,
        )


def test_manual_optimization_checks_the_sampler_against_slots_per_rank(tmp_path):
    with pytest.raises(Exception, match=r"LanguageBatchSampler\(slots_per_rank=2\).*expects 1"):
        fit(
            tmp_path,
            BucketMOOStrategy("mgda", start_method="fork"),
            devices=1,
            model=ManualModel(slots=2),
            data=LanguageData(slots_per_rank=2),
        )


def test_manual_optimization_stepping_mid_step_is_an_error(tmp_path):
    with pytest.raises(Exception, match="optimizer stepped after 1 of the 2 slots"):
        fit(
            tmp_path,
            BucketMOOStrategy("mgda", slots_per_rank=2, start_method="fork"),
            devices=1,
            model=ManualModel(slots=1),
            data=LanguageData(slots_per_rank=2),
        )
