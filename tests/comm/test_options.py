"""HookOptions: one validated record of the hook's options."""

from __future__ import annotations

import dataclasses

import pytest

from lightning_bmoo.aggregators import MGDA
from lightning_bmoo.comm import HookOptions, check_hook_options


def test_build_makes_the_aggregator_once_and_validates_everything():
    options = HookOptions.build("cagrad", {"c": 0.3}, granularity="parameter", seed=4)
    assert options.aggregator.name == "cagrad" and options.aggregator.c == 0.3
    assert (options.granularity, options.seed, options.transport) == ("parameter", 4, "sharded")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 5  # type: ignore[misc]
    assert options.replace(seed=5).seed == 5 and options.seed == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"transport": "ring"}, "Unknown transport 'ring'. Valid values: sharded, gather."),
        ({"granularity": "layer"}, "Valid values: bucket, parameter, global"),
        ({"nonfinite": "ignore"}, "Unknown nonfinite policy 'ignore'"),
        ({"slots_per_rank": 0}, "slots_per_rank must be an int >= 1"),
        ({"slots_per_rank": True}, "slots_per_rank must be an int >= 1"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"direction_only": "yes"}, "direction_only must be a bool"),
        ({"bucket_size": 3}, r"Unknown hook option\(s\) \['bucket_size'\]"),
    ],
)
def test_bad_options_name_the_problem_and_the_valid_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HookOptions.build("mgda", **kwargs)


def test_an_instance_or_a_name_and_undecided_fields():
    instance = MGDA()
    assert HookOptions.build(instance).aggregator is instance
    with pytest.raises(ValueError, match="does not accept option"):
        HookOptions.build("mgda", {"c": 1})
    undecided = HookOptions.build("mgda", slots_per_rank=None, nonfinite=None)
    with pytest.raises(ValueError, match=r"\['slots_per_rank', 'nonfinite'\] are undecided"):
        undecided.resolved()
    assert undecided.replace(slots_per_rank=2, nonfinite="drop").resolved().slots_per_rank == 2


def test_check_hook_options_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="HookOptions.build"):
        assert check_hook_options("upgrad", transport="gather").name == "upgrad"


def test_old_names_still_work_with_a_deprecation_warning():
    from lightning_bmoo import comm
    from lightning_bmoo.comm import SlotTasks, StepStats

    with pytest.warns(DeprecationWarning, match="SlotTasks"):
        assert comm.Layout is SlotTasks
    stats = StepStats(step=0, slots=["en", "de"], tasks=["de", "en"])
    with pytest.warns(DeprecationWarning, match="StepStats.slots"):
        assert stats.layout == ["en", "de"]
