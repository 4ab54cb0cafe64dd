"""What every bucket-MOO hook keeps, whatever wraps the model (DDP, FSDP): slots, solves, state.

A hook state knows the step's slots (the user declares each microbatch's language), meets the
other ranks at the start of every backward pass to learn theirs, solves each group with
:func:`~lightning_bmoo.comm.solve.solve_group` and records what it did in
:class:`~lightning_bmoo.comm.stats.StepStats`; its checkpoint state is versioned and says what
produced it. The wrapper-specific part (how gradients arrive and leave) is in the subclasses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
import weakref
import zlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..aggregators import Aggregator
from ..vocabulary import check_language_name
from .layout import Announcement, SlotTasks, announce_slot
from .options import HookOptions
from .solve import solve_group
from .stats import GroupStats, StepStats
from .transports import Channels, CommCounter, group_timeout, open_channels

#: Version of :meth:`HookState.state_dict`'s envelope.
STATE_VERSION = 2

# Options whose change makes a resumed run differ from a straight one (the aggregator and the
# granularity also make the saved aggregator state meaningless: it is keyed by group).
_RECORDED = ("aggregator", "granularity", "transport", "slots_per_rank", "direction_only", "seed")


class HookState:
    """Configuration, slots, solves and statistics shared by the bucket-MOO hooks.

    Args:
        options: the hook's options (see :class:`~lightning_bmoo.comm.HookOptions`); every field
            must be decided.
        process_group: the group gradients are reduced over (default: the world).
        param_names: name of each parameter, by ``id(parameter)``; used for stable state keys
            and statistics.
        layout_extra: what else determines the groups (e.g. DDP's bucket size), recorded in
            checkpoints so that a resume with other groups warns.
    """

    def __init__(
        self,
        options: HookOptions,
        *,
        process_group: dist.ProcessGroup | None = None,
        param_names: dict[int, str] | None = None,
        layout_extra: dict[str, Any] | None = None,
    ) -> None:
        self.options = options.resolved()
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialised: call dist.init_process_group (torchrun "
                "or Lightning do this) before registering the bucket-MOO hook."
            )
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.channels: Channels = open_channels(process_group)
        self.param_names = dict(param_names or {})
        self.layout_extra = dict(layout_extra or {})
        #: Set by the strategies when a GradScaler will skip steps with NaN/inf gradients;
        #: then ``nonfinite="propagate"`` needs no warning.
        self.expect_scaler = False
        if self.world_size * self.slots_per_rank < 2:
            warnings.warn(
                "Bucket MOO with one slot per step (world size 1, slots_per_rank 1) sees one "
                "language per step: every aggregator reduces to plain SGD. Use several ranks "
                "or gradient accumulation with language-homogeneous microbatches.",
                stacklevel=3,
            )
        #: Index of the next optimizer step (counts completed steps).
        self.step = 0
        #: Statistics of the last completed step.
        self.last_step: StepStats | None = None
        self._language: str | None = None
        self._backwards = 0  # backward passes that reached the hook, ever
        self._warned: set[str] = set()
        # Optimizer steps over these parameters, counted by a global post-step hook: plain
        # torch code calls optimizer.step() itself, and a rank that steps after a partial step
        # must be caught by every rank at the next slot exchange.
        self._optimizer_steps = 0
        self._optimizers: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
        handle = register_optimizer_step_post_hook(_step_counter(weakref.ref(self)))
        weakref.finalize(self, handle.remove)

    # -- options, read-only ------------------------------------------------------------------

    @property
    def aggregator(self) -> Aggregator:
        """The aggregator (its state is saved by :meth:`state_dict`)."""
        return self.options.aggregator

    @property
    def slots_per_rank(self) -> int:
        """K: backward passes per rank per optimizer step."""
        assert self.options.slots_per_rank is not None
        return self.options.slots_per_rank

    @property
    def granularity(self) -> str:
        """``"bucket"``, ``"parameter"`` or ``"global"``."""
        return self.options.granularity

    @property
    def nonfinite(self) -> str:
        """``"drop"`` or ``"propagate"``."""
        assert self.options.nonfinite is not None
        return self.options.nonfinite

    @property
    def seed(self) -> int:
        """Seed of stochastic aggregators."""
        return self.options.seed

    # -- the user's side -------------------------------------------------------------------

    def set_slot(self, language: str) -> None:
        """Declares the language of the microbatch whose backward pass comes next.

        Raises:
            ValueError: if ``language`` is not a valid language name
                (see :func:`~lightning_bmoo.vocabulary.check_language_name`).
        """
        self._language = check_language_name(language)

    @contextlib.contextmanager
    def slot(self, language: str) -> Iterator[None]:
        """Context manager around one microbatch's forward and backward: ``set_slot`` + check.

        Raises:
            RuntimeError: if no backward pass reached the hook inside the block.
        """
        self.set_slot(language)
        backwards = self._backwards
        yield
        if self._backwards == backwards:
            raise RuntimeError(
                f"No backward pass reached the bucket-MOO hook inside slot({language!r}). "
                "Call loss.backward() inside the block, outside DDP's no_sync() (with FSDP, "
                "without set_requires_gradient_sync(False))."
            )

    @property
    def slot_index(self) -> int:
        """Which microbatch of the current step the next backward pass is (0-based)."""
        raise NotImplementedError

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The step counter and the aggregator's state, with the options that produced them."""
        return {
            "version": STATE_VERSION,
            "options": self.options.describe(),
            "world_size": self.world_size,
            "layout_extra": dict(self.layout_extra),
            "step": self.step,
            "aggregator_state": self.aggregator.state_dict(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output (or an older version's); call between steps.

        Everything that changes the groups or the solve (aggregator, granularity, transport,
        slots, world size, bucket size, seed, direction-only) is compared with the saved run's
        and each difference warns: the run is then not an exact continuation. The aggregator's
        state is restored only when the aggregator and the granularity are unchanged (it is
        kept per group); the step counter always is.

        Raises:
            RuntimeError: if called in the middle of a step.
            ValueError: for an unknown checkpoint version.
        """
        if self.slot_index != 0:
            raise RuntimeError("load_state_dict was called in the middle of a step.")
        saved = _upgrade(saved)
        mine = self.state_dict()
        then, now = dict(saved["options"]), mine["options"]
        changes = [
            f"{k}: {then[k]!r} -> {now[k]!r}" for k in _RECORDED if then.get(k, now[k]) != now[k]
        ]
        for name in ("world_size", "layout_extra"):
            if saved.get(name, mine[name]) != mine[name]:
                changes.append(f"{name}: {saved[name]!r} -> {mine[name]!r}")
        if changes:
            warnings.warn(
                "Resuming the bucket-MOO hook with other settings than the checkpoint's ("
                + "; ".join(changes)
                + "): each step's solve sees other groups or slots, so the run is not an exact "
                "continuation.",
                stacklevel=2,
            )
        self.step = int(saved["step"])
        # An older checkpoint that did not record a setting is taken to have had today's.
        same_groups = all(then.get(k, now[k]) == now[k] for k in ("aggregator", "granularity"))
        if same_groups:
            self.aggregator.load_state_dict(saved["aggregator_state"])
        elif self.aggregator.stateful:
            warnings.warn(
                f"The checkpoint's aggregator state is for {then.get('aggregator')!r} at "
                f"granularity {then.get('granularity')!r}; {now['aggregator']!r} at "
                f"{now['granularity']!r} starts from a fresh state.",
                stacklevel=2,
            )
            self.aggregator.reset()

    # -- for the subclasses ------------------------------------------------------------------

    def _exchange_slot(self, slot: int) -> list[str]:
        """Every rank's language for this backward pass (one small collective)."""
        return self._announce_slot(slot).wait()

    def _announce_slot(self, slot: int) -> Announcement:
        """Starts :meth:`_exchange_slot`'s collective; ``wait()`` gives its result."""
        if self._language is None:
            raise RuntimeError(
                "A backward pass reached the bucket-MOO hook without a language: call "
                "state.set_slot(language) (or use `with state.slot(language):`) before each "
                "microbatch's backward."
            )
        return announce_slot(
            self._language,
            slots_per_rank=self.slots_per_rank,
            step=self.step,
            slot=slot,
            optimizer_steps=self._optimizer_steps,
            group=self.channels.control,
            world_size=self.world_size,
        )

    def _begin_step_stats(self, per_slot: list[list[str]]) -> tuple[SlotTasks, StepStats]:
        """The step's slot tasks from every slot's languages (``per_slot[k][r]``), and its stats."""
        # Slot s of the step is microbatch s % K of rank s // K.
        slots = [per_rank[r] for r in range(self.world_size) for per_rank in per_slot]
        slot_tasks = SlotTasks.from_slots(slots)
        if len(slot_tasks.tasks) < 2:
            self._warn_once(
                "single",
                f"Step {self.step} has a single language {slot_tasks.tasks[0]!r} in all its "
                "slots: MOO is a no-op for it. A LanguageBatchSampler gives every step "
                "several languages.",
            )
        return slot_tasks, StepStats(
            step=self.step, slots=list(slots), tasks=list(slot_tasks.tasks)
        )

    def _solve(
        self, gramian: Tensor, stats: StepStats, key: str, numel: int, names: list[str]
    ) -> GroupStats:
        """Solves one group (identically on every rank) and returns its statistics."""
        solution = solve_group(
            gramian,
            stats.tasks,
            self.aggregator,
            nonfinite=self.nonfinite,
            key=key,
            generator=self._generator(key),
            direction_only=self.options.direction_only,
        )
        if solution.dropped and not set(solution.dropped) <= stats.dropped:
            warnings.warn(
                f"Step {self.step}: non-finite gradients for {list(solution.dropped)} in "
                f"{key!r}; dropping them from this group's solve (nonfinite='drop').",
                stacklevel=2,
            )
        stats.dropped.update(solution.dropped)
        if solution.propagated:
            bad = ~torch.isfinite(gramian.diagonal())
            stats.propagated.update(stats.tasks[t] for t in bad.nonzero().flatten().tolist())
            if not self.expect_scaler:
                self._warn_once(
                    "propagate",
                    f"Step {self.step}: non-finite gradients for {sorted(stats.propagated)} in "
                    f"{key!r} reach the update (nonfinite='propagate'). That is meant for a "
                    "GradScaler, which skips such steps; without one the optimizer applies "
                    "NaN/inf. Use nonfinite='drop' without AMP's GradScaler.",
                )
        if solution.fallback is not None:
            self._warn_once(
                "fallback",
                f"Step {self.step}: aggregator {self.aggregator.name!r} failed on group {key!r} "
                f"({solution.fallback}); the group uses the mean of its active languages this "
                "step, on every rank. Later failures are counted in StepStats.fallbacks.",
            )
        return GroupStats(
            key,
            numel,
            gramian,
            solution.active,
            solution.weights,
            names,
            fallback=solution.fallback,
            scale=solution.scale,
        )

    def _solve_global(
        self, stats: StepStats, parts: list[tuple[str, int, Tensor, list[str]]]
    ) -> GroupStats:
        """Solves the whole model once from its parts' ``(key, numel, gramian, names)``.

        Records the solve as ``stats.global_group`` and each part as a group carrying the
        global weights, and returns the solve.
        """
        total = torch.stack([gramian for _, _, gramian, _ in parts]).sum(0)
        names = [name for *_, part_names in parts for name in part_names]
        numel = sum(numel for _, numel, _, _ in parts)
        solved = self._solve(total, stats, "global", numel, names)
        stats.global_group = solved
        stats.groups.extend(
            dataclasses.replace(solved, key=key, numel=n, gramian=gramian, param_names=part)
            for key, n, gramian, part in parts
        )
        return solved

    def _complete_step(self, stats: StepStats, counter: CommCounter, seconds: float) -> None:
        """Records the traffic and time of a completed step and moves on to the next step."""
        stats.bytes_sent = dict(counter.sent)
        stats.bytes_received = dict(counter.received)
        stats.collectives = dict(counter.collectives)
        stats.hook_seconds = seconds
        stats.peak_extra_bytes = counter.peak
        self.last_step = stats
        self.step += 1

    def _collective_failed(self, error: Exception, slot: int) -> RuntimeError:
        """The error to raise when a collective of the hook fails (a peer stalled or died)."""
        timeout = group_timeout(self.process_group)
        return RuntimeError(
            f"Rank {self.rank}: a collective of the bucket-MOO hook failed at step {self.step}, "
            f"slot {slot} ({error}). Another rank stalled for longer "
            f"than the process group's timeout ({timeout}), died, or stopped calling backward "
            "in step with this one; its own log tells which. The process group can no longer "
            "be trusted: restart from the last checkpoint (the timeout is "
            "init_process_group(timeout=...), or the strategy's timeout=... in Lightning)."
        )

    def _optimizer_stepped(self, optimizer: Any) -> None:
        ours = self._optimizers.get(optimizer)
        if ours is None:
            ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
            ours = self._optimizers[optimizer] = not ids.isdisjoint(self.param_names)
        if ours:
            self._optimizer_steps += 1

    def _generator(self, key: str) -> torch.Generator | None:
        if not self.aggregator.stochastic:
            return None
        mixed = self.seed * 0x9E3779B1 + self.step * 1_000_003 + zlib.crc32(key.encode())
        return torch.Generator().manual_seed(mixed % (1 << 63))

    def _name(self, p: Tensor) -> str:
        return self.param_names.get(id(p), f"param@{id(p):x}")

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            warnings.warn(message, stacklevel=3)


def _step_counter(ref: weakref.ReferenceType[HookState]) -> Any:
    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        state = ref()
        if state is not None:
            state._optimizer_stepped(optimizer)

    return hook


def _upgrade(saved: dict[str, Any]) -> dict[str, Any]:
    """Reads every envelope version as the current one."""
    version = saved.get("version")
    if version == STATE_VERSION:
        return saved
    if version == 1:  # BucketMOOStrategy's checkpoint entry, lightning_bmoo 0.1
        inner = saved["state"]
        return {
            "options": {
                "aggregator": saved["aggregator"],
                "slots_per_rank": saved["slots_per_rank"],
                "seed": inner["seed"],
            },
            "world_size": saved["world_size"],
            "step": inner["step"],
            "aggregator_state": inner["aggregator"],
        }
    if version is None and {"step", "seed", "aggregator"} <= set(saved):  # plain state, 0.1
        return {
            "options": {"seed": saved["seed"]},
            "step": saved["step"],
            "aggregator_state": saved["aggregator"],
        }
    raise ValueError(
        f"Unsupported bucket-MOO checkpoint version {version!r} (this lightning_bmoo reads "
        f"versions 1 to {STATE_VERSION})."
    )
