"""Temperature sampling at any temperature, language names checked, warnings said once."""

from __future__ import annotations

import math
import warnings

import pytest

from lightning_bmoo import LanguageBatchSampler
from lightning_bmoo.data.schedule import resolve_probabilities

SIZES = {"en": 1000, "de": 300, "sw": 20}


def _reference(sizes: dict[str, int], tau: float) -> dict[str, float]:
    # The textbook formula, fine at moderate temperatures.
    weights = {lang: float(n) ** (1 / tau) for lang, n in sizes.items()}
    total = math.fsum(weights.values())
    return {lang: w / total for lang, w in weights.items()}


@pytest.mark.parametrize("tau", [1, 2, 5])
def test_temperature_gives_n_to_the_one_over_tau(tau):
    got = resolve_probabilities(float(tau), SIZES)
    for lang, p in _reference(SIZES, float(tau)).items():
        assert got[lang] == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize("tau", [1e-3, 1e-6, 1e-300])
def test_tiny_temperatures_put_everything_on_the_largest_language(tau):
    probs = resolve_probabilities(tau, SIZES)  # n ** 1000 overflows a float
    assert probs["en"] == pytest.approx(1.0)
    assert 0.0 < probs["de"] < 1e-300 and 0.0 < probs["sw"] < 1e-300
    assert math.fsum(probs.values()) == pytest.approx(1.0)


def test_the_largest_share_grows_towards_one_as_the_temperature_falls():
    largest = [resolve_probabilities(tau, SIZES)["en"] for tau in (10, 2, 1, 0.5, 0.1, 0.01)]
    assert largest == sorted(largest)
    assert largest[-1] == pytest.approx(1.0)


def test_tied_largest_languages_share_evenly_at_tiny_temperature():
    probs = resolve_probabilities(1e-4, {"en": 500, "fr": 500, "sw": 10})
    assert probs["en"] == pytest.approx(0.5) and probs["fr"] == pytest.approx(0.5)


def test_empty_languages_weigh_nothing_at_any_temperature():
    for tau in (1e-3, 1.0, math.inf):
        assert resolve_probabilities(tau, {"en": 10, "xx": 0})["xx"] == 0.0


def _languages(sizes: dict[str, int]) -> list[str]:
    return [lang for lang, n in sizes.items() for _ in range(n)]


def test_sampler_at_a_tiny_temperature_schedules_the_largest_language_only():
    sampler = LanguageBatchSampler(
        _languages(SIZES), 4, probabilities=1e-3, coverage=False, steps_per_epoch=20
    )
    assert {lang for t in range(20) for lang in sampler.step_slots(t)} == {"en"}


def test_sampler_at_a_tiny_temperature_still_covers_every_language_with_coverage():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # coverage raising the tiny shares is the point here
        sampler = LanguageBatchSampler(
            _languages(SIZES), 4, probabilities=1e-3, slots_per_rank=3, steps_per_epoch=10
        )
    assert all(sorted(sampler.step_slots(t)) == ["de", "en", "sw"] for t in range(10))


@pytest.mark.parametrize("name", ["", " en", "en\n", "a|b", "zh/Hans", "x" * 65, 3])
def test_invalid_language_names_are_rejected_at_construction(name):
    with pytest.raises(ValueError, match="language name"):
        LanguageBatchSampler(["en", "en", name, name], 1)


def test_invalid_language_names_are_rejected_in_from_datasets():
    with pytest.raises(ValueError, match=r"'de\|en'"):
        LanguageBatchSampler.from_datasets({"de|en": [1, 2], "fr": [3, 4]}, 1)


def test_valid_tags_pass():
    sampler = LanguageBatchSampler(["zh-Hans", "en_US", "pt-BR", "sr-Latn"], 1)
    assert sampler.languages == ["en_US", "pt-BR", "sr-Latn", "zh-Hans"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"probabilities": {"en": 0.9, "de": 0.1}, "slots_per_rank": 2},  # coverage clips
        {"batch_size": 4, "drop_last": True},  # 'sw' is smaller than a batch
    ],
)
def test_construction_warnings_come_from_rank_zero_only(kwargs):
    languages = ["en"] * 10 + ["de"] * 10 + ["sw"] * 2
    if "probabilities" in kwargs:
        languages = languages[:20]
    kwargs = {"batch_size": 1, **kwargs}
    with pytest.warns(UserWarning):
        LanguageBatchSampler(languages, rank=0, world_size=2, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LanguageBatchSampler(languages, rank=1, world_size=2, **kwargs)
