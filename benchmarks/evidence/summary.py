"""From finished runs to numbers per arm: chosen learning rate, seed statistics, paired
differences against the tuned-averaging baseline."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from .config import Arm, Regime
from .protocol import Plan, Results, val_mean

#: Two-sided 97.5 % quantiles of Student's t by degrees of freedom (a 95 % interval).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}

#: Families whose best arm (by validation) is the tuned-averaging baseline.
BASELINE_FAMILIES = ("averaging", "static")


@dataclass
class Paired:
    """Differences arm - baseline over the seeds both have."""

    values: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    @property
    def half_width(self) -> float:
        """Half the 95 % t-interval of the mean difference."""
        n = len(self.values)
        return _T975.get(n - 1, 1.96) * self.sd / math.sqrt(n) if n > 1 else math.nan

    @property
    def significant(self) -> bool:
        """Whether the 95 % interval excludes zero (one comparison; see the docs on many)."""
        return math.isfinite(self.half_width) and abs(self.mean) > self.half_width


@dataclass
class ArmSummary:
    """One arm in one regime."""

    arm: Arm
    grid: dict[float, float]  # learning rate -> validation mean loss (first seed)
    lr: float | None
    at_edge: bool
    runs: dict[int, dict] = field(default_factory=dict)  # seed -> result, at the chosen lr
    paired_mean: Paired | None = None
    paired_worst: Paired | None = None
    paired_lang: dict[str, Paired] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.lr is not None and len(self.runs) > 0

    def per_seed(self, metric: str, split: str = "test") -> list[float]:
        return [_metric(r, metric, split) for r in self.runs.values()]

    def language_mean(self, lang: str, split: str = "test") -> float:
        return statistics.fmean(r[f"{split}_loss"][lang] for r in self.runs.values())

    def diagnostic(self, key: str) -> float:
        values = [r["diagnostics"][key] for r in self.runs.values() if r.get("diagnostics")]
        return statistics.fmean(values) if values else math.nan

    @property
    def seconds(self) -> float:
        return statistics.fmean(r["seconds"] for r in self.runs.values())

    @property
    def peak_mb(self) -> float:
        return max(r["hook_peak_extra_mb"] for r in self.runs.values())


def _metric(result: dict, metric: str, split: str) -> float:
    values = list(result[f"{split}_loss"].values())
    return statistics.fmean(values) if metric == "mean" else max(values)


@dataclass
class RegimeSummary:
    """Every arm of one regime, and the baseline they are compared with."""

    regime: Regime
    arms: dict[str, ArmSummary]
    grid: tuple[float, ...] | None
    baseline: str | None
    expected_seeds: int

    def complete_arms(self) -> list[ArmSummary]:
        return [a for a in self.arms.values() if a.complete]

    def worst_language(self, summary: ArmSummary) -> str:
        langs = self.regime.languages
        return max(langs, key=summary.language_mean)


def summarise(regime: Regime, arms: Sequence[Arm], results: Results) -> RegimeSummary:
    """Decides each arm's learning rate as the protocol did, gathers its seeds, picks the
    baseline (lowest validation loss over seeds among the averaging and static arms with all
    seeds) and pairs every arm with it seed by seed."""
    plan = Plan(regime, arms, results)
    grid = plan.grid()
    out: dict[str, ArmSummary] = {}
    for arm in arms:
        sweep = {s.lr: val_mean(results[s.key]) for s in plan.sweep(arm) if s.key in results}
        lr = plan.chosen_lr(arm)
        summary = ArmSummary(arm, sweep, lr, plan.at_edge(arm))
        for spec in plan.seeds(arm):
            if spec.key in results:
                summary.runs[spec.seed] = results[spec.key]
        out[arm.name] = summary
    full = [
        a
        for a in out.values()
        if a.arm.family in BASELINE_FAMILIES and len(a.runs) == len(regime.seeds)
    ]
    baseline = None
    if full:
        best = min(full, key=lambda a: statistics.fmean(val_mean(r) for r in a.runs.values()))
        baseline = best.arm.name
        for summary in out.values():
            _pair(summary, best, regime)
    return RegimeSummary(regime, out, grid, baseline, len(regime.seeds))


def _pair(summary: ArmSummary, base: ArmSummary, regime: Regime) -> None:
    seeds = sorted(set(summary.runs) & set(base.runs))

    def diff(metric: str) -> Paired:
        return Paired(
            [
                _metric(summary.runs[s], metric, "test") - _metric(base.runs[s], metric, "test")
                for s in seeds
            ]
        )

    summary.paired_mean = diff("mean")
    summary.paired_worst = diff("worst")
    summary.paired_lang = {
        lang: Paired(
            [summary.runs[s]["test_loss"][lang] - base.runs[s]["test_loss"][lang] for s in seeds]
        )
        for lang in regime.languages
    }
