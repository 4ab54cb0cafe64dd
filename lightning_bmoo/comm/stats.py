"""What the hook records about each step, for callbacks and benchmarks to read."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

#: Where the hook's time goes, in the order a bucket meets them (see ``StepStats.seconds``).
PHASES = (
    "slots",  # the slot message every backward pass all-gathers (blocking, tiny)
    "exchange",  # launching the exchange of a slot's rows (every backward pass)
    "wait",  # waiting for exchanged rows to arrive
    "gramian",  # partial Gramians of the rows this rank holds
    "reduce",  # summing the T x T partials over ranks (blocking, small)
    "solve",  # solve_group: the aggregator and its bookkeeping, per group
    "combine",  # the weighted sum of the rows
    "gather",  # launching the all-gather of the combined shards
    "other",  # the rest: Python bookkeeping of the hook
)


class PhaseClock:
    """Wall time per phase of :data:`PHASES`, lap by lap: one ``perf_counter`` call each.

    :meth:`start` on entering the hook, then :meth:`lap` after each piece of work names the
    phase the time since the previous lap belongs to.
    """

    __slots__ = ("last", "seconds")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.last = 0.0

    def start(self) -> None:
        """Starts timing (on entering the hook)."""
        self.last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """Adds the time since the previous lap (or :meth:`start`) to ``phase``."""
        now = time.perf_counter()
        self.seconds[phase] += now - self.last
        self.last = now


@dataclass
class GroupStats:
    """One MOO solve: a bucket, a parameter, or (granularity ``global``) the whole model.

    Attributes:
        key: the group's name (``"global"``, a parameter name, or ``"first..last"``
            parameter names of a bucket).
        numel: number of gradient elements in the group.
        gramian: ``T x T`` float64 Gramian of the step's task rows in this group, in units of
            raw microbatch gradients (the tasks are ``StepStats.tasks``).
        active: which tasks took part in the solve (a task whose row is zero, or that was
            dropped as non-finite, did not).
        weights: the task weights applied (0 for inactive tasks); ``d = sum_t w_t row_t``.
        param_names: the parameters of the group, in bucket order.
        fallback: why the aggregator's weights were replaced by the mean of the active tasks
            (it raised or returned non-finite weights), or ``None``.
        scale: the factor ``direction_only`` applied to the aggregator's weights (1.0 when
            off): ``1 / scale`` is how long the aggregator's own update was relative to the
            mean's.
    """

    key: str
    numel: int
    gramian: Tensor
    active: Tensor
    weights: Tensor
    param_names: list[str] = field(default_factory=list)
    fallback: str | None = None
    scale: float = 1.0


@dataclass
class StepStats:
    """Everything the hook knows about one optimizer step.

    Attributes:
        step: index of the step (0-based, counted by the hook).
        slots: language of every slot of the step, slot ``s`` being microbatch ``s % K`` of
            rank ``s // K`` (``layout`` before 0.2, still readable, deprecated).
        tasks: the distinct languages of the step, sorted; rows/columns of every Gramian.
        groups: one entry per solve, in bucket order. With granularity ``global`` these are the
            per-bucket Gramians (with the global weights) and ``global_group`` holds the solve.
        global_group: the whole-model solve (granularity ``global`` only).
        bytes_sent: bytes this rank sent, per collective kind (ring algorithms assumed for
            all-reduce and all-gather).
        bytes_received: bytes this rank received, per collective kind.
        collectives: number of collectives issued, per kind.
        hook_seconds: wall time spent inside the hook.
        seconds: ``hook_seconds`` split by phase (the keys of :data:`PHASES`, in that order):
            where the hook's time went on this rank. Waiting that happens after the hook
            returned (DDP waiting for the last all-gathers) is in none of them.
        peak_extra_bytes: most bytes of gradient-sized buffers the hook held at once beyond
            DDP's own buckets (exchanged rows, of the earlier slots too).
        dropped: languages dropped from some group for non-finite gradients.
        propagated: languages whose non-finite gradients reached the update
            (``nonfinite="propagate"``).
    """

    step: int
    slots: list[str]
    tasks: list[str]
    groups: list[GroupStats] = field(default_factory=list)
    global_group: GroupStats | None = None
    bytes_sent: dict[str, int] = field(default_factory=dict)
    bytes_received: dict[str, int] = field(default_factory=dict)
    collectives: dict[str, int] = field(default_factory=dict)
    hook_seconds: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    peak_extra_bytes: int = 0
    dropped: set[str] = field(default_factory=set)
    propagated: set[str] = field(default_factory=set)

    @property
    def layout(self) -> list[str]:
        """Deprecated name of :attr:`slots`."""
        warnings.warn(
            "StepStats.layout is deprecated: read StepStats.slots (the same list).",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.slots

    @property
    def fallbacks(self) -> int:
        """How many solves this step fell back to the mean because the aggregator failed."""
        solves = [self.global_group] if self.global_group is not None else self.groups
        return sum(group.fallback is not None for group in solves)

    def total_gramian(self) -> Tensor:
        """Sum of the groups' Gramians: the whole-model Gramian of the task gradients."""
        T = len(self.tasks)
        total = torch.zeros(T, T, dtype=torch.float64)
        for group in self.groups:
            total += torch.nan_to_num(group.gramian, nan=0.0, posinf=0.0, neginf=0.0)
        return total
