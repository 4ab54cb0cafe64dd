"""Bad input fails early with a clear message; plain averaging measures interference too."""

from __future__ import annotations

import pytest
import torch

from lightning_bmoo.callbacks import InterferenceMonitor
from lightning_bmoo.strategy import BucketMOOStrategy
from tests.strategy.models import LanguageData

from .fits import fit


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_every_n_steps": 0}, "log_every_n_steps"),
        ({"log_every_n_steps": 2.5}, "log_every_n_steps"),
        ({"lookahead_every": -1}, "lookahead_every"),
        ({"top_k": 0}, "top_k"),
        ({"languages": "en"}, "non-empty list"),
        ({"languages": ["en", "en"]}, "duplicates"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InterferenceMonitor(**kwargs)


def test_without_the_bucket_moo_strategy_setup_fails(tmp_path):
    with pytest.raises(TypeError, match=r"BucketMOOStrategy\('mean'\)"):
        fit(tmp_path, InterferenceMonitor(), devices=1, strategy="auto")


def test_languages_the_sampler_never_serves(tmp_path):
    with pytest.raises(Exception, match=r"names \['xx'\]"):
        fit(tmp_path, InterferenceMonitor(languages=["de", "xx"]), devices=1,
            data=LanguageData(slots_per_rank=2), accumulate_grad_batches=2)  # fmt: skip


def test_a_batch_of_an_undeclared_language(tmp_path):
    with pytest.raises(Exception, match="not in InterferenceMonitor"):
        fit(tmp_path, InterferenceMonitor(languages=["de"]), devices=1,
            data=LanguageData(slots_per_rank=2), accumulate_grad_batches=2)  # fmt: skip


def test_mean_aggregator_measures_a_plain_run(tmp_path):
    # One process, two slots per step: with "mean" the update is DDP's average, so the MOO gain
    # equals the plain-averaging gain and the update ratio is 1.
    (rank,) = fit(
        tmp_path,
        InterferenceMonitor(log_every_n_steps=1),
        devices=1,
        strategy=BucketMOOStrategy("mean", start_method="fork"),
        data=LanguageData(slots_per_rank=2),
        accumulate_grad_batches=2,
    )
    metrics = rank["last_metrics"]
    assert metrics["interference/update_ratio"] == pytest.approx(1.0)
    gains = [k for k in metrics if k.startswith("interference/gain/")]
    assert len(gains) == 2
    for key in gains:
        mean_key = key.replace("/gain/", "/gain_mean/")
        assert metrics[key] == pytest.approx(metrics[mean_key])
    weights = [v for k, v in metrics.items() if k.startswith("interference/weight/")]
    torch.testing.assert_close(torch.tensor(weights), torch.tensor([0.5, 0.5]), rtol=0, atol=1e-12)
