"""The hook's options: one frozen record, validated once, passed from the strategy to the state."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from ..aggregators import Aggregator, get_aggregator
from .transports import TRANSPORTS

#: Where one MOO problem is solved: per DDP bucket / FSDP unit, per parameter tensor, or once.
GRANULARITIES = ("bucket", "parameter", "global")

#: What happens to a language whose gradient holds NaN or inf (see :class:`HookOptions`).
NONFINITE_POLICIES = ("drop", "propagate")


@dataclass(frozen=True)
class HookOptions:
    """Everything that configures a bucket-MOO hook, checked when the record is made.

    Build it with :meth:`build` from an aggregator name; the strategies build one at
    construction, so a bad option fails before any process starts.

    Attributes:
        aggregator: the aggregator instance (its state is the hook's state).
        transport: ``"sharded"`` (all-to-all + all-gather, the traffic of an all-reduce) or
            ``"gather"`` (all-gather every slot; simple, W/2 times the traffic).
        granularity: ``"bucket"`` (one solve per DDP bucket or FSDP unit), ``"parameter"`` (one
            per parameter tensor) or ``"global"`` (one over the whole model, the classic MOO
            baseline).
        slots_per_rank: K, the microbatches (backward passes) each rank runs per optimizer
            step. ``None`` only in a strategy's record: it is then taken from the trainer.
        nonfinite: ``"drop"`` leaves a language whose gradient in a group has NaN/inf out of
            that group's solve, with a warning; ``"propagate"`` lets NaN/inf reach the gradients
            as plain DDP would, so that AMP's GradScaler skips the step (without a scaler the
            optimizer would apply them: the hook warns). ``None`` only in a strategy's record:
            ``"propagate"`` under a GradScaler, else ``"drop"``.
        seed: seeds stochastic aggregators, per (step, group), identically on every rank.
        direction_only: rescale each group's update to the length of the ``mean`` update over
            the same languages (``|d|^2 = w^T K w`` and ``|mean|^2 = 1^T K 1 / T^2`` both come
            from the Gramian): the aggregator then chooses the direction only, and the learning
            rate keeps its meaning. Off by default (the methods' own step lengths).

    Raises:
        ValueError: naming the bad option and its valid values.
    """

    aggregator: Aggregator
    transport: str = "sharded"
    granularity: str = "bucket"
    slots_per_rank: int | None = 1
    nonfinite: str | None = "drop"
    seed: int = 0
    direction_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.aggregator, Aggregator):
            raise TypeError(
                f"HookOptions.aggregator must be an Aggregator instance, got "
                f"{type(self.aggregator).__name__}; use HookOptions.build('mgda', ...)."
            )
        _check_choice("transport", self.transport, tuple(TRANSPORTS))
        _check_choice("granularity", self.granularity, GRANULARITIES)
        if self.nonfinite is not None:
            _check_choice("nonfinite policy", self.nonfinite, NONFINITE_POLICIES)
        if self.slots_per_rank is not None and not _is_int(self.slots_per_rank, 1):
            raise ValueError(f"slots_per_rank must be an int >= 1, got {self.slots_per_rank!r}.")
        if not _is_int(self.seed, None):
            raise ValueError(f"seed must be an int, got {self.seed!r}.")
        if not isinstance(self.direction_only, bool):
            raise ValueError(f"direction_only must be a bool, got {self.direction_only!r}.")

    @classmethod
    def build(
        cls,
        aggregator: str | Aggregator = "mgda",
        aggregator_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> HookOptions:
        """Builds the aggregator (a name with its options, or an instance) and the record.

        Args:
            aggregator: a name from :func:`~lightning_bmoo.available_aggregators` or an
                :class:`~lightning_bmoo.Aggregator` instance.
            aggregator_options: keyword arguments of the aggregator's constructor.
            **options: the other fields of :class:`HookOptions`.

        Raises:
            ValueError: for an unknown aggregator, aggregator option or hook option.
        """
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cls)} - {"aggregator"})
        if unknown or "aggregator" in options:
            valid = [f.name for f in dataclasses.fields(cls) if f.name != "aggregator"]
            raise ValueError(
                f"Unknown hook option(s) {unknown or ['aggregator']}. Valid options: "
                f"{', '.join(valid)} (and aggregator_options for the aggregator)."
            )
        return cls(get_aggregator(aggregator, **(aggregator_options or {})), **options)

    def replace(self, **changes: Any) -> HookOptions:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> HookOptions:
        """Returns the record if every field is decided, else raises.

        Raises:
            ValueError: if ``slots_per_rank`` or ``nonfinite`` is still ``None``.
        """
        missing = [name for name in ("slots_per_rank", "nonfinite") if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"HookOptions {missing} are undecided (None): a hook needs values. The strategies "
                "decide them from the trainer; plain torch users pass them."
            )
        return self

    def describe(self) -> dict[str, Any]:
        """The options as plain values, for checkpoints and logs."""
        return {
            "aggregator": self.aggregator.name,
            "transport": self.transport,
            "granularity": self.granularity,
            "slots_per_rank": self.slots_per_rank,
            "nonfinite": self.nonfinite,
            "seed": self.seed,
            "direction_only": self.direction_only,
        }


def _check_choice(what: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}. Valid values: {', '.join(choices)}.")


def _is_int(value: object, minimum: int | None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return minimum is None or value >= minimum


def check_hook_options(
    aggregator: str | Aggregator,
    aggregator_options: dict[str, Any] | None = None,
    **options: Any,
) -> Aggregator:
    """Deprecated: validates the hook's options and returns the aggregator.

    Use :meth:`HookOptions.build`, which returns the validated record.
    """
    warnings.warn(
        "check_hook_options is deprecated: use HookOptions.build(aggregator, "
        "aggregator_options, **options), which returns the validated record.",
        DeprecationWarning,
        stacklevel=2,
    )
    return HookOptions.build(aggregator, aggregator_options, **options).aggregator
