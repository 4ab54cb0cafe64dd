"""The bucket-MOO hook's state: configuration, the current step's slots, and statistics."""

from __future__ import annotations

import contextlib
import time
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future

from ..aggregators import Aggregator, get_aggregator
from .layout import MAX_LANGUAGE_BYTES, Layout, exchange_slot
from .linalg import combine_rows, row_gramian, task_gramian
from .stats import GroupStats, StepStats
from .transports import TRANSPORTS, CommCounter, Exchange, open_channels

GRANULARITIES = ("bucket", "parameter", "global")

NONFINITE_POLICIES = ("drop", "propagate")


def _check_choice(what: str, value: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise ValueError(f"Unknown {what} {value!r}. Valid values: {', '.join(choices)}.")
    return value


def check_hook_options(
    aggregator: str | Aggregator,
    aggregator_options: dict[str, Any] | None = None,
    *,
    transport: str = "sharded",
    granularity: str = "bucket",
    nonfinite: str = "drop",
    slots_per_rank: int = 1,
) -> Aggregator:
    """Validates the hook's options without a process group; returns the aggregator.

    Raises:
        ValueError: naming the bad option and its valid values.
    """
    built = get_aggregator(aggregator, **(aggregator_options or {}))
    _check_choice("transport", transport, list(TRANSPORTS))
    _check_choice("granularity", granularity, GRANULARITIES)
    _check_choice("nonfinite policy", nonfinite, NONFINITE_POLICIES)
    if (
        not isinstance(slots_per_rank, int)
        or isinstance(slots_per_rank, bool)
        or slots_per_rank < 1
    ):
        raise ValueError(f"slots_per_rank must be an int >= 1, got {slots_per_rank!r}.")
    return built


class _Segment:
    """A range ``[start, end)`` of a bucket solved as one group."""

    __slots__ = ("end", "key", "names", "start")

    def __init__(self, start: int, end: int, key: str, names: list[str]) -> None:
        self.start, self.end, self.key, self.names = start, end, key, names


class _Job:
    """One bucket of the last slot, from exchange to combined result."""

    __slots__ = ("bucket", "exchange", "future", "gramians", "numel", "segments")

    def __init__(self, exchange: Exchange, segments: list[_Segment], bucket: Tensor) -> None:
        self.exchange: Exchange | None = exchange
        self.segments = segments
        self.bucket = bucket
        self.numel = bucket.numel()
        self.gramians: Tensor | None = None  # (segments, T, T), summed over ranks
        self.future: Future = Future()


class BucketMOOState:
    """State of the bucket-MOO DDP communication hook.

    Create it with :func:`~lightning_bmoo.comm.register_bucket_moo_hook`. Before each backward
    pass, declare the language of that microbatch with :meth:`slot` (or :meth:`set_slot`); after
    ``slots_per_rank`` backward passes the step is complete, the gradients hold the MOO update,
    and :attr:`last_step` describes it.

    Args:
        aggregator: an aggregator name (see :func:`~lightning_bmoo.available_aggregators`) or
            instance.
        param_names: name of each parameter, by ``id(parameter)``; used for stable state keys
            and statistics.
        process_group: the group DDP reduces over (default: the world).
        transport: ``"sharded"`` (all-to-all + all-gather, the traffic of an all-reduce) or
            ``"gather"`` (all-gather every slot; simple, W/2 times the traffic).
        granularity: ``"bucket"`` (one solve per DDP bucket), ``"parameter"`` (one per parameter
            tensor) or ``"global"`` (one solve over the whole model, the classic MOO baseline).
        slots_per_rank: K, the microbatches (backward passes) each rank runs per optimizer step.
        nonfinite: ``"drop"`` removes a language whose gradient in a group has NaN/inf from that
            group's solve, with a warning; ``"propagate"`` lets NaN/inf reach the gradients as
            plain DDP would, so that AMP's GradScaler skips the step.
        seed: seeds stochastic aggregators, per (step, group), identically on every rank.
        aggregator_options: options passed to the aggregator's constructor.
    """

    def __init__(
        self,
        aggregator: str | Aggregator = "mgda",
        *,
        param_names: dict[int, str] | None = None,
        process_group: dist.ProcessGroup | None = None,
        transport: str = "sharded",
        granularity: str = "bucket",
        slots_per_rank: int = 1,
        nonfinite: str = "drop",
        seed: int = 0,
        aggregator_options: dict[str, Any] | None = None,
    ) -> None:
        self.aggregator = check_hook_options(
            aggregator,
            aggregator_options,
            transport=transport,
            granularity=granularity,
            nonfinite=nonfinite,
            slots_per_rank=slots_per_rank,
        )
        self.granularity = granularity
        self.nonfinite = nonfinite
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "torch.distributed is not initialised: call dist.init_process_group (torchrun "
                "or Lightning do this) before registering the bucket-MOO hook."
            )
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.channels = open_channels(process_group)
        self.transport = TRANSPORTS[transport](self.channels, self.rank, self.world_size)
        self.slots_per_rank = slots_per_rank
        self.seed = seed
        self.param_names = dict(param_names or {})
        if self.world_size * slots_per_rank < 2:
            warnings.warn(
                "Bucket MOO with one slot per step (world size 1, slots_per_rank 1) sees one "
                "language per step: every aggregator reduces to plain SGD. Use several ranks "
                "or gradient accumulation with language-homogeneous microbatches.",
                stacklevel=2,
            )
        #: Index of the next optimizer step (counts completed steps).
        self.step = 0
        #: Statistics of the last completed step.
        self.last_step: StepStats | None = None
        self._warned_single_task = False
        self._reset_step()

    # -- the user's side -------------------------------------------------------------------

    def set_slot(self, language: str) -> None:
        """Declares the language of the microbatch whose backward pass comes next."""
        if not isinstance(language, str) or not language:
            raise ValueError(f"A slot's language must be a non-empty string, got {language!r}.")
        self._language = language

    @contextlib.contextmanager
    def slot(self, language: str) -> Iterator[None]:
        """Context manager around one microbatch's forward and backward: ``set_slot`` + check.

        Raises:
            RuntimeError: if no backward pass ran inside the block.
        """
        self.set_slot(language)
        backwards = self._backwards
        yield
        if self._backwards == backwards:
            raise RuntimeError(
                f"No backward pass reached the bucket-MOO hook inside slot({language!r}). "
                "Call loss.backward() inside the block, outside DDP's no_sync()."
            )

    @property
    def slot_index(self) -> int:
        """Which microbatch of the current step the next backward pass is (0-based)."""
        return len(self._slot_languages)

    def state_dict(self) -> dict[str, Any]:
        """Step counter and aggregator state, for checkpoints."""
        return {"step": self.step, "seed": self.seed, "aggregator": self.aggregator.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output; call it between optimizer steps."""
        if self._slot_languages:
            raise RuntimeError("load_state_dict was called in the middle of a step.")
        self.step = int(state_dict["step"])
        self.seed = int(state_dict["seed"])
        self.aggregator.load_state_dict(state_dict["aggregator"])

    # -- the hook's side ---------------------------------------------------------------------

    def _reset_step(self) -> None:
        self._slot_languages: list[list[str]] = []  # per slot so far: every rank's language
        self._language: str | None = None
        self._layout: Layout | None = None
        self._stats: StepStats | None = None
        self._stash_rows: dict[tuple[int, ...], list[Tensor]] = {}
        self._stash_params: dict[int, list[Tensor]] = {}
        self._jobs: list[_Job] = []  # the last slot's buckets, in order
        self._solved = 0  # how many of them have their Gramians
        self._counter = CommCounter()
        self._seconds = 0.0
        self._backwards = getattr(self, "_backwards", 0)
        self._bucket_calls = 0

    def on_bucket(self, bucket: dist.GradBucket) -> Future:
        """Handles one DDP bucket; called by :func:`bucket_moo_hook`."""
        start = time.perf_counter()
        if self._language is None:
            raise RuntimeError(
                "A backward pass reached the bucket-MOO hook without a language: call "
                "state.set_slot(language) (or use `with state.slot(language):`) before each "
                "microbatch's backward."
            )
        buffer = bucket.buffer()
        params = bucket.parameters()
        if self._bucket_calls == 0:
            self._slot_languages.append(
                exchange_slot(
                    self._language, self.slots_per_rank, self.channels.control, self.world_size
                )
            )
            if self.world_size > 1:
                nbytes = (self.world_size - 1) * (8 + MAX_LANGUAGE_BYTES)
                self._counter.add("layout", nbytes, nbytes)
        self._bucket_calls += 1
        if len(self._slot_languages) < self.slots_per_rank:
            self._stash(params, buffer)
            # The next slot must accumulate from zero so that its gradient stays apart.
            future: Future = Future()
            future.set_result(buffer.zero_())
        else:
            if self._layout is None:
                self._begin_last_slot()
            self._progress(final=False)
            rows = self._local_rows(params, buffer)
            job = _Job(self.transport.exchange(rows, self._counter), self._segments(params), buffer)
            self._jobs.append(job)
            if bucket.is_last():
                self._progress(final=True)
            future = job.future
        self._seconds += time.perf_counter() - start
        if bucket.is_last():
            self._end_backward()
        return future

    def _stash(self, params: list[Tensor], buffer: Tensor) -> None:
        copy = buffer.clone()
        self._counter.allocate(copy.numel() * copy.element_size())
        self._stash_rows.setdefault(tuple(map(id, params)), []).append(copy)
        offset = 0
        for p in params:
            self._stash_params.setdefault(id(p), []).append(copy[offset : offset + p.numel()])
            offset += p.numel()

    def _local_rows(self, params: list[Tensor], buffer: Tensor) -> list[Tensor]:
        if self.slots_per_rank == 1:
            return [buffer]
        earlier = self._stash_rows.get(tuple(map(id, params)))
        if earlier is None or len(earlier) != self.slots_per_rank - 1:
            # DDP rebuilt its buckets between slots (after the first iteration): reassemble
            # each earlier slot's rows for this bucket from the per-parameter views.
            earlier = [
                torch.cat([self._stash_params[id(p)][k] for p in params])
                for k in range(self.slots_per_rank - 1)
            ]
        return [*earlier, buffer]

    def _name(self, p: Tensor) -> str:
        return self.param_names.get(id(p), f"param@{id(p):x}")

    def _segments(self, params: list[Tensor]) -> list[_Segment]:
        names = [self._name(p) for p in params]
        if self.granularity == "parameter":
            segments, offset = [], 0
            for p, name in zip(params, names):
                segments.append(_Segment(offset, offset + p.numel(), name, [name]))
                offset += p.numel()
            return segments
        key = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"
        return [_Segment(0, sum(p.numel() for p in params), key, names)]

    def _begin_last_slot(self) -> None:
        # Slot s of the step is microbatch s % K of rank s // K.
        slots = [per_rank[r] for r in range(self.world_size) for per_rank in self._slot_languages]
        self._layout = Layout.from_slots(slots)
        T = len(self._layout.tasks)
        if T < 2 and not self._warned_single_task:
            self._warned_single_task = True
            warnings.warn(
                f"Step {self.step} has a single language {self._layout.tasks[0]!r} in all its "
                "slots: MOO is a no-op for it. A LanguageBatchSampler gives every step "
                "several languages.",
                stacklevel=2,
            )
        self._stats = StepStats(step=self.step, layout=list(slots), tasks=list(self._layout.tasks))

    def _partial_gramians(self, job: _Job) -> Tensor:
        assert job.exchange is not None and self._layout is not None
        rows = job.exchange.rows()
        lo, hi = job.exchange.lo, job.exchange.hi
        T = len(self._layout.tasks)
        out = torch.zeros(len(job.segments), T, T, dtype=torch.float64, device=rows.device)
        averaging = self._layout.averaging.to(rows.device)
        for i, seg in enumerate(job.segments):
            a, b = max(seg.start, lo) - lo, min(seg.end, hi) - lo
            if b <= a:
                continue
            gram = row_gramian(rows[:, a:b])
            out[i] = gram if self._layout.identity else task_gramian(gram, averaging)
        return out

    def _progress(self, final: bool) -> None:
        """Solves and finishes, in bucket order, every bucket exchanged so far; global MOO
        finishes every bucket at the final call only.

        Called before the next bucket's exchange starts, so the hook holds one exchanged
        bucket at a time; each exchange still overlaps with the backward pass that computes
        the next bucket. (Letting more wait unsolved measured no faster on gloo, for one
        more bucket of memory each.)
        """
        scale = float(self.slots_per_rank) ** 2
        for job in self._jobs[self._solved :]:
            partial = self._partial_gramians(job)
            job.gramians = self.transport.reduce(partial, self._counter).cpu() * scale
            if self.granularity != "global":
                groups = [self._solve(g, seg) for g, seg in zip(job.gramians, job.segments)]
                self._stats.groups.extend(groups)
                self._finish(job, [group.weights for group in groups])
        self._solved = len(self._jobs)
        if final and self.granularity == "global":
            self._finish_global()

    def _finish_global(self) -> None:
        assert self._stats is not None
        total = torch.stack([job.gramians.sum(0) for job in self._jobs]).sum(0)
        names = [n for job in self._jobs for seg in job.segments for n in seg.names]
        numel = sum(job.numel for job in self._jobs)
        solved = self._solve(total, _Segment(0, numel, "global", names))
        self._stats.global_group = solved
        for job in self._jobs:
            for gram, seg in zip(job.gramians, job.segments):
                self._stats.groups.append(
                    GroupStats(
                        seg.key, seg.end - seg.start, gram, solved.active, solved.weights, seg.names
                    )
                )
            self._finish(job, [solved.weights] * len(job.segments))

    def _generator(self, key: str) -> torch.Generator | None:
        if not self.aggregator.stochastic:
            return None
        mixed = self.seed * 0x9E3779B1 + self.step * 1_000_003 + zlib.crc32(key.encode())
        return torch.Generator().manual_seed(mixed % (1 << 63))

    def _solve(self, gram: Tensor, seg: _Segment) -> GroupStats:
        """Weights for one group; returns them with the group's statistics."""
        assert self._layout is not None and self._stats is not None
        tasks = self._layout.tasks
        T = len(tasks)
        diag = gram.diagonal()
        finite = torch.isfinite(diag)
        weights = torch.zeros(T, dtype=torch.float64)
        if not bool(finite.all()) and self.nonfinite == "propagate":
            # Plain DDP's average: NaN/inf reach the gradients and GradScaler skips the step.
            active = torch.ones(T, dtype=torch.bool)
            weights.fill_(1.0 / T)
        else:
            if not bool(finite.all()):
                bad = [tasks[t] for t in (~finite).nonzero().flatten().tolist()]
                if not set(bad) <= self._stats.dropped:
                    warnings.warn(
                        f"Step {self.step}: non-finite gradients for {bad} in {seg.key!r}; "
                        "dropping them from this group's solve (nonfinite='drop').",
                        stacklevel=2,
                    )
                self._stats.dropped.update(bad)
            # A task whose row is zero here (it never touches these parameters) takes no
            # part: MGDA would otherwise pick the zero vector and freeze the group.
            active = finite & (diag > 0)
            index = active.nonzero().flatten()
            if index.numel() > 0:
                sub = gram[index][:, index]
                weights[index] = self.aggregator(
                    sub,
                    tasks=[tasks[t] for t in index.tolist()],
                    key=seg.key,
                    generator=self._generator(seg.key),
                )
        return GroupStats(seg.key, seg.end - seg.start, gram, active, weights, seg.names)

    def _finish(self, job: _Job, weights: list[Tensor]) -> None:
        assert job.exchange is not None and self._layout is not None
        exchange, job.exchange = job.exchange, None
        rows = exchange.rows()
        lo, hi = exchange.lo, exchange.hi
        self._counter.release(exchange.nbytes)
        # Slot weights: task weight spread over the task's slots, times K so that the update
        # is a combination of raw microbatch gradients (Lightning divides the loss by K).
        to_slots = self._layout.averaging.T * float(self.slots_per_rank)
        slot_weights = [to_slots @ w for w in weights]
        segments = job.segments

        def combined(out: Tensor) -> None:
            for seg, v in zip(segments, slot_weights):
                a, b = max(seg.start, lo) - lo, min(seg.end, hi) - lo
                if b > a:
                    combine_rows(rows[:, a:b], v, out[a:b])

        result = self.transport.finish(combined, job.bucket, self._counter)
        target = job.future

        def deliver(done: Future) -> None:
            try:
                target.set_result(done.value())
            except Exception as error:  # surfaces in DDP's wait instead of a hang
                target.set_exception(error)

        result.add_done_callback(deliver)

    def _end_backward(self) -> None:
        self._backwards += 1
        self._bucket_calls = 0
        self._language = None
        if len(self._slot_languages) < self.slots_per_rank:
            return
        assert self._stats is not None
        stats = self._stats
        stats.bytes_sent = dict(self._counter.sent)
        stats.bytes_received = dict(self._counter.received)
        stats.collectives = dict(self._counter.collectives)
        stats.hook_seconds = self._seconds
        stats.peak_extra_bytes = self._counter.peak
        self.last_step = stats
        self.step += 1
        self._reset_step()
