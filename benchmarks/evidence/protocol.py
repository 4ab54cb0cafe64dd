"""The protocol: which runs come next, given the finished ones.

Per regime:

1. **pilot**: the reference arm (plain averaging, uniform layout) over the regime's wide
   learning-rate sweep, seed 0;
2. **sweep**: every arm over the same grid, its best pilot value times 1/2, 1 and 2, seed 0;
3. **seeds**: every arm at its own best grid value (lowest validation loss averaged over the
   languages) for the remaining seeds.

Selection reads only validation losses; test losses are for the report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import ARMS, GRID_FACTORS, REFERENCE_ARM, Arm, Regime, RunSpec

Results = Mapping[str, dict]  # run key -> result


def val_mean(result: dict) -> float:
    """The selection criterion: validation loss averaged over languages (inf if diverged)."""
    values = list(result["val_loss"].values())
    mean = statistics.fmean(values)
    return mean if math.isfinite(mean) else math.inf


@dataclass
class Plan:
    """The protocol's state for one regime: what is decided and what is still to run."""

    regime: Regime
    arms: Sequence[Arm]
    results: Results

    def _best(self, specs: Sequence[RunSpec]) -> float | None:
        """The learning rate with the lowest validation loss (the smaller on a tie), or None
        while a run is missing."""
        if any(s.key not in self.results for s in specs):
            return None
        scored = [(val_mean(self.results[s.key]), s.lr) for s in specs]
        return min(scored)[1]

    def pilot(self) -> list[RunSpec]:
        arm = ARMS[REFERENCE_ARM]
        return [RunSpec(self.regime, arm, lr, self.regime.seeds[0]) for lr in self.regime.pilot_lrs]

    def centre(self) -> float | None:
        """The reference arm's best pilot learning rate (None until the pilot is done)."""
        return self._best(self.pilot())

    def grid(self) -> tuple[float, ...] | None:
        centre = self.centre()
        return None if centre is None else tuple(centre * f for f in GRID_FACTORS)

    def sweep(self, arm: Arm) -> list[RunSpec]:
        grid = self.grid()
        seed = self.regime.seeds[0]
        return [] if grid is None else [RunSpec(self.regime, arm, lr, seed) for lr in grid]

    def chosen_lr(self, arm: Arm) -> float | None:
        sweep = self.sweep(arm)
        return self._best(sweep) if sweep else None

    def at_edge(self, arm: Arm) -> bool:
        """Whether the chosen learning rate is the grid's smallest or largest value."""
        grid, lr = self.grid(), self.chosen_lr(arm)
        return grid is not None and lr is not None and lr in (grid[0], grid[-1])

    def seeds(self, arm: Arm) -> list[RunSpec]:
        lr = self.chosen_lr(arm)
        return [] if lr is None else [RunSpec(self.regime, arm, lr, s) for s in self.regime.seeds]

    def decided(self) -> list[tuple[int, RunSpec]]:
        """Every run decided so far, once each, with its stage (0 pilot, 1 sweep, 2 seeds)."""
        out: list[tuple[int, RunSpec]] = [(0, s) for s in self.pilot()]
        for arm in self.arms:
            out += [(1, s) for s in self.sweep(arm)]
            out += [(2, s) for s in self.seeds(arm)]
        seen: set[str] = set()
        unique = []
        for stage, spec in out:
            if spec.key not in seen:
                seen.add(spec.key)
                unique.append((stage, spec))
        return unique

    def pending(self) -> list[tuple[int, RunSpec]]:
        """Decided runs without a result yet, with their stage, for ordering."""
        return [(stage, s) for stage, s in self.decided() if s.key not in self.results]

    def finished(self) -> int:
        """Decided runs with a result (results of other settings in the folder do not count)."""
        return sum(s.key in self.results for _, s in self.decided())

    def upper_bound(self) -> int:
        """Runs the whole protocol needs at most (pilot, 3 grid values and the seeds per arm)."""
        grid_new = sum(1 for f in GRID_FACTORS if f != 1.0)  # values beyond the pilot, at most
        per_arm = len(GRID_FACTORS) + len(self.regime.seeds) - 1
        return len(self.regime.pilot_lrs) + grid_new + per_arm * len(self.arms)
