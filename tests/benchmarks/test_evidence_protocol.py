"""The evidence benchmark's protocol and statistics, on synthetic results (no training)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmarks.evidence.config import ARMS, QUICK, REFERENCE_ARM, RunSpec
from benchmarks.evidence.protocol import Plan
from benchmarks.evidence.summary import summarise
from benchmarks.evidence.train import step_diagnostics
from lightning_bmoo.comm import GroupStats, StepStats

LANGS = QUICK.languages


def result(spec: RunSpec, val: float, test: dict[str, float] | None = None) -> dict:
    test = test or dict.fromkeys(LANGS, val)
    return {
        "key": spec.key,
        "spec": {"arm": spec.arm.name, "lr": spec.lr, "seed": spec.seed},
        "val_loss": dict.fromkeys(LANGS, val),
        "test_loss": test,
        "seconds": 1.0,
        "hook_peak_extra_mb": 0.0,
        "diagnostics": None,
    }


def test_pilot_then_grid_then_seeds_at_each_arms_best() -> None:
    arms = [ARMS[REFERENCE_ARM], ARMS["mgda-bucket"]]
    results: dict[str, dict] = {}
    plan = Plan(QUICK, arms, results)
    first = plan.pending()
    assert [s.lr for _, s in first] == list(QUICK.pilot_lrs)  # nothing else is decided yet
    assert {stage for stage, _ in first} == {0}
    # The reference is best at the middle pilot value: the grid is centred there.
    for _, spec in first:
        results[spec.key] = result(spec, 5.0 if spec.lr == 2e-3 else 6.0)
    assert plan.grid() == (1e-3, 2e-3, 4e-3)
    sweep = [s for stage, s in plan.pending() if stage == 1]
    assert {(s.arm.name, s.lr) for s in sweep} == {("mgda-bucket", lr) for lr in (1e-3, 2e-3, 4e-3)}
    # The reference's grid values are its pilot runs: its seeds come at once.
    seeds = [s for stage, s in plan.pending() if stage == 2]
    assert {(s.arm.name, s.lr, s.seed) for s in seeds} == {(REFERENCE_ARM, 2e-3, 1)}
    # MGDA diverges at the top and is best at the bottom: its own choice, flagged as an edge.
    for spec in sweep:
        results[spec.key] = result(spec, {1e-3: 4.0, 2e-3: 4.5, 4e-3: math.inf}[spec.lr])
    assert plan.chosen_lr(arms[1]) == 1e-3 and plan.at_edge(arms[1])
    assert not plan.at_edge(arms[0])
    later = {(s.arm.name, s.lr, s.seed) for _, s in plan.pending()}
    assert later == {(REFERENCE_ARM, 2e-3, 1), ("mgda-bucket", 1e-3, 1)}


def test_run_keys_change_with_everything_a_result_depends_on() -> None:
    spec = RunSpec(QUICK, ARMS["mgda-bucket"], 1e-3, 0)
    same = RunSpec(QUICK, ARMS["mgda-bucket"], 0.002 / 2, 0)
    assert spec.key == same.key
    others = [
        RunSpec(QUICK, ARMS["mgda-bucket-dir"], 1e-3, 0),
        RunSpec(QUICK, ARMS["mgda-bucket"], 2e-3, 0),
        RunSpec(QUICK, ARMS["mgda-bucket"], 1e-3, 1),
        RunSpec(dataclasses.replace(QUICK, steps=4), ARMS["mgda-bucket"], 1e-3, 0),
    ]
    assert len({spec.key, *(o.key for o in others)}) == 5


def _complete(results: dict, arm: str, lr: float, tests: list[dict[str, float]], val: float):
    for seed, test in zip(QUICK.seeds, tests):
        spec = RunSpec(QUICK, ARMS[arm], lr, seed)
        results[spec.key] = result(spec, val, test)


def test_baseline_is_chosen_on_validation_and_differences_are_paired_by_seed() -> None:
    arms = [ARMS["avg-tinf"], ARMS["avg-t1"], ARMS["mgda-bucket"]]
    results: dict[str, dict] = {}
    for lr in QUICK.pilot_lrs:  # centre 2e-3, every arm best there
        for arm in arms:
            spec = RunSpec(QUICK, arm, lr, 0)
            results[spec.key] = result(spec, 5.0 if lr == 2e-3 else 6.0)
    base = [{"en": 5.0, "ru": 5.0, "hi": 6.0}, {"en": 5.2, "ru": 5.2, "hi": 6.2}]
    _complete(results, "avg-tinf", 2e-3, base, 5.0)
    # avg-t1 is better on test but worse on validation: it must not become the baseline.
    _complete(results, "avg-t1", 2e-3, [{k: v - 1 for k, v in t.items()} for t in base], 5.1)
    # MGDA: hi lower by 0.3 in both seeds, en higher by 0.1 and 0.3.
    mgda = [{"en": 5.1, "ru": 5.0, "hi": 5.7}, {"en": 5.5, "ru": 5.2, "hi": 5.9}]
    _complete(results, "mgda-bucket", 2e-3, mgda, 5.0)
    summary = summarise(QUICK, arms, results)
    assert summary.baseline == "avg-tinf"
    m = summary.arms["mgda-bucket"]
    assert m.paired_worst.values == pytest.approx([-0.3, -0.3])
    assert m.paired_lang["en"].values == pytest.approx([0.1, 0.3])
    assert m.paired_mean.values == pytest.approx([-0.2 / 3, 0.0])
    assert m.paired_worst.sd == pytest.approx(0.0, abs=1e-12)
    assert not m.paired_lang["en"].significant  # two seeds, t(1) = 12.7: a wide interval
    assert summary.worst_language(m) == "hi"


def _group(M: torch.Tensor, w: torch.Tensor, scale: float = 1.0) -> GroupStats:
    T = M.shape[0]
    return GroupStats("g", 10, M, torch.ones(T, dtype=torch.bool), w, scale=scale)


def test_step_diagnostics_against_hand_computed_values() -> None:
    # Two orthogonal gradients of lengths 1 and 2 (one bucket), and a bucket where they conflict.
    M1 = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    M2 = torch.tensor([[1.0, -1.0], [-1.0, 4.0]], dtype=torch.float64)
    mgda = torch.tensor([0.8, 0.2], dtype=torch.float64)  # min-norm point of M1: |d|^2 = 0.8
    stats = StepStats(0, ["a", "b"], ["a", "b"], [_group(M1, mgda), _group(M2, mgda, scale=2.0)])
    d = step_diagnostics(stats)
    applied = float(mgda @ M1 @ mgda) + float(mgda @ M2 @ mgda)
    mean = (5.0 + 3.0) / 4
    assert d["length_ratio"] == pytest.approx(math.sqrt(applied / mean))
    own = float(mgda @ M1 @ mgda) + float(mgda @ M2 @ mgda) / 4
    assert d["own_length_ratio"] == pytest.approx(math.sqrt(own / mean))
    assert d["cos_mean"] == d["cos_min"] == pytest.approx(-1.0 / (math.sqrt(2) * math.sqrt(8)))
    assert d["conflict_rate"] == 0.5
    assert d["weight_share"] == pytest.approx({"a": 0.8, "b": 0.2})
