from __future__ import annotations

import pytest
import torch

from lightning_bmoo.aggregators import Aggregator, Mean, available_aggregators, get_aggregator

EXPECTED = {"mean", "mgda", "pcgrad", "cagrad", "gradvac", "nash_mtl", "imtl_g"}
EXPECTED |= {"aligned_mtl", "upgrad", "random"}


def test_every_method_of_the_paper_family_is_registered():
    assert set(available_aggregators()) >= EXPECTED


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"Unknown aggregator 'mgdaa'.*mgda.*upgrad"):
        get_aggregator("mgdaa")


def test_unknown_option_lists_accepted_options():
    with pytest.raises(ValueError, match=r"does not accept option\(s\) \['gamma'\]"):
        get_aggregator("mean", gamma=1.0)


def test_instance_passes_through_and_rejects_extra_options():
    agg = Mean()
    assert get_aggregator(agg) is agg
    with pytest.raises(ValueError, match="either a name"):
        get_aggregator(agg, c=0.5)


def test_names_are_case_insensitive_and_repr_shows_options():
    agg = get_aggregator("MEAN")
    assert isinstance(agg, Aggregator) and repr(agg) == "Mean()"


def test_mean_is_the_average():
    G = torch.randn(3, 7, dtype=torch.float64)
    w = get_aggregator("mean")(G @ G.T)
    torch.testing.assert_close(w @ G, G.mean(0))
