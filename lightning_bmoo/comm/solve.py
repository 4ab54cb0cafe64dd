"""One group's MOO solve, a pure function of its Gramian: the same on every rank, no process group.

The hook (DDP or FSDP) reduces a group's ``T x T`` Gramian over ranks, so every rank calls
:func:`solve_group` on identical input and gets identical weights. Everything that decides the
weights lives here: which languages take part, the non-finite policy, the fallback when a
solver fails, and the direction-only rescaling.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..aggregators import Aggregator

# Below this ratio |d|^2 / |mean|^2 the aggregator's update is a rounding residue (MGDA at a
# Pareto-stationary point): stretching it to the mean's length would amplify noise.
_VANISHED = 1e-12


@dataclass(frozen=True)
class Solution:
    """What the solve of one group decided.

    Attributes:
        active: ``T`` bools: which languages took part.
        weights: ``T`` float64 weights applied, 0 for languages that took no part.
        dropped: languages left out for non-finite gradients (``nonfinite="drop"``).
        propagated: non-finite gradients were let through (``nonfinite="propagate"``).
        fallback: why the aggregator's weights were replaced by the mean of the active
            languages (the exception or the bad weights), or ``None``.
        scale: the factor ``direction_only`` multiplied the weights by (1.0 otherwise).
    """

    active: Tensor
    weights: Tensor
    dropped: tuple[str, ...] = ()
    propagated: bool = False
    fallback: str | None = None
    scale: float = 1.0


def solve_group(
    gramian: Tensor,
    tasks: Sequence[str],
    aggregator: Aggregator,
    *,
    nonfinite: str = "drop",
    key: Hashable = None,
    generator: torch.Generator | None = None,
    direction_only: bool = False,
) -> Solution:
    """Weights of the ``T`` languages for one group, from its Gramian.

    * A language whose row is zero here (it never touches these parameters: an adapter or
      head of another language) takes no part; otherwise MGDA would pick the zero vector and
      freeze the group.
    * A language with a non-finite diagonal is left out (``nonfinite="drop"``), or every
      language gets the plain average so that NaN/inf reach the update
      (``nonfinite="propagate"``, for AMP's GradScaler to skip the step).
    * If the aggregator raises or returns weights that are not ``T_active`` finite numbers,
      the active languages are averaged instead (``Solution.fallback`` says why): a solver
      never takes the backward pass down.

    Args:
        gramian: ``T x T`` float64 CPU Gramian of the languages' gradients in this group,
            exactly symmetric (symmetrise sums of partial products once, ``(M + M.T) / 2``:
            the aggregator is called with ``validate=False``), NaN in the rows of non-finite
            languages.
        tasks: the ``T`` language names.
        aggregator: the method.
        nonfinite: ``"drop"`` or ``"propagate"``.
        key: the group's name, for stateful aggregators.
        generator: randomness for stochastic aggregators.
        direction_only: rescale the weights so that ``|d| = |mean update|`` over the active
            languages (no effect on a vanished update or on the fallback).
    """
    T = len(tasks)
    # Hundreds of groups a step, each a few microseconds of torch ops: the bookkeeping is done
    # on Python floats, and the common case (every language active) indexes nothing.
    diag = gramian.diagonal().tolist()
    finite = [math.isfinite(d) for d in diag]
    all_finite = all(finite)
    if not all_finite and nonfinite == "propagate":
        # Plain DDP's average: NaN/inf reach the gradients and GradScaler skips the step.
        return Solution(
            torch.ones(T, dtype=torch.bool),
            torch.full((T,), 1.0 / T, dtype=torch.float64),
            propagated=True,
        )
    dropped = () if all_finite else tuple(tasks[t] for t in range(T) if not finite[t])
    index = [t for t in range(T) if finite[t] and diag[t] > 0]
    n = len(index)
    if n == T:
        active, sub, names = torch.ones(T, dtype=torch.bool), gramian, list(tasks)
    else:
        active = torch.zeros(T, dtype=torch.bool)
        active[index] = True
        if n == 0:
            return Solution(active, torch.zeros(T, dtype=torch.float64), dropped)
        rows = torch.tensor(index)
        sub, names = gramian[rows][:, rows], [tasks[t] for t in index]
    fallback = None
    try:
        # The hook's Gramians are float64, finite on the active rows, and exactly symmetric
        # (it symmetrises them once, after summing over ranks): the checks would find nothing.
        chosen = aggregator(sub, tasks=names, key=key, generator=generator, validate=False)
        if chosen.shape != (n,) or not all(map(math.isfinite, chosen.tolist())):
            fallback = f"it returned {chosen.tolist()!r} for {n} languages"
    except Exception as error:  # any solver failure: the group falls back, training goes on
        fallback = f"it raised {type(error).__name__}: {error}"
    if fallback is not None:
        chosen = torch.full((n,), 1.0 / n, dtype=torch.float64)
    scale = 1.0
    if direction_only and fallback is None:
        scale = _mean_length_scale(sub, chosen)
        chosen = chosen * scale
    if n == T:
        weights = chosen.to(torch.float64, copy=True)  # the aggregator may keep what it returns
    else:
        weights = torch.zeros(T, dtype=torch.float64)
        weights[index] = chosen.to(torch.float64)
    return Solution(active, weights, dropped, fallback=fallback, scale=scale)


def _mean_length_scale(gramian: Tensor, weights: Tensor) -> float:
    """``|mean| / |d|`` with ``|d|^2 = w^T K w`` and ``|mean|^2 = 1^T K 1 / T^2``."""
    w = weights.to(torch.float64)
    update = float(w @ gramian @ w)
    mean = float(gramian.sum()) / gramian.shape[0] ** 2
    if mean <= 0.0 or update <= _VANISHED * mean:
        return 1.0
    return math.sqrt(mean / update)
