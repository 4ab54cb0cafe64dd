"""The DDP hook's state: each bucket's slots exchanged, solved and combined, phase by phase."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future

from ..aggregators import Aggregator
from .base import HookState
from .layout import SLOT_MESSAGE_BYTES, Announcement, SlotTasks
from .linalg import combine_ranges, one_thread, row_gramian, task_gramian
from .options import HookOptions
from .slots import SlotExchanges
from .stats import PhaseClock, StepStats
from .transports import TRANSPORTS, CommCounter, Exchange, PeerError, Summed, peers


class _Segment:
    """A range ``[start, end)`` of a bucket solved as one group."""

    __slots__ = ("end", "key", "names", "start")

    def __init__(self, start: int, end: int, key: str, names: list[str]) -> None:
        self.start, self.end, self.key, self.names = start, end, key, names


class _Job:
    """One bucket of the last slot, from exchange to combined result."""

    __slots__ = (
        "bucket",
        "exchange",
        "future",
        "gramians",
        "idle",
        "numel",
        "params",
        "segments",
        "summed",
    )

    def __init__(
        self, exchange: Exchange, segments: list[_Segment], bucket: Tensor, params: list[Tensor]
    ) -> None:
        self.exchange: Exchange | None = exchange
        self.segments = segments
        self.bucket = bucket
        self.params = params
        self.numel = bucket.numel()
        self.summed: Summed | None = None  # the partial Gramians' sum, on its way
        self.gramians: Tensor | None = None  # (segments, T, T), summed over ranks
        self.idle: list[bool] = []  # per parameter: zero in every rank's last slot
        self.future: Future = Future()


@dataclass
class _Step:
    """Scratch of the step in progress; replaced by a fresh one when the step completes."""

    exchanges: SlotExchanges
    counter: CommCounter
    slots: list[list[str]] = field(default_factory=list)  # per slot so far: every rank's language
    slot: int = 0  # the slot of the backward pass in progress
    announced: Announcement | None = None  # its slot message, until read
    slot_tasks: SlotTasks | None = None
    # The slot tasks' averaging matrix with its columns in the order of the exchanged rows
    # (slot-major: row k W + r is slot k of rank r, which SlotTasks numbers r K + k).
    averaging: Tensor | None = None
    identity: bool = False  # whether that matrix is the identity
    stats: StepStats | None = None
    jobs: list[_Job] = field(default_factory=list)  # the last slot's buckets, in order
    reducing: int = 0  # how many jobs have their partial Gramians on their way
    solved: int = 0  # how many jobs have their Gramians
    clock: PhaseClock = field(default_factory=PhaseClock)
    bucket_calls: int = 0  # buckets seen in the current backward pass


class BucketMOOState(HookState):
    """State of the bucket-MOO DDP communication hook.

    Create it with :func:`~lightning_bmoo.comm.register_bucket_moo_hook`. Before each backward
    pass, declare the language of that microbatch with :meth:`slot` (or :meth:`set_slot`); after
    ``slots_per_rank`` backward passes the step is complete, the gradients hold the MOO update,
    and :attr:`last_step` describes it.

    Args:
        options: the hook's options (:class:`~lightning_bmoo.comm.HookOptions`).
        process_group: the group DDP reduces over (default: the world).
        param_names: name of each parameter, by ``id(parameter)``.
        find_unused_parameters: whether DDP looks for parameters a backward pass does not use
            (per-language heads or adapters). DDP leaves the ``.grad`` of a parameter that no
            rank used in the *last* backward pass untouched, so with several slots the hook
            then writes its update there itself.
        bucket_cap_bytes: DDP's bucket size, recorded in checkpoints.
    """

    def __init__(
        self,
        options: HookOptions | str | Aggregator = "mgda",
        *,
        process_group: dist.ProcessGroup | None = None,
        param_names: dict[int, str] | None = None,
        find_unused_parameters: bool = False,
        bucket_cap_bytes: int | None = None,
        **legacy: Any,
    ) -> None:
        if not isinstance(options, HookOptions):
            warnings.warn(
                "BucketMOOState(aggregator, transport=..., ...) is deprecated: use "
                "register_bucket_moo_hook(ddp, aggregator, ...), or pass "
                "HookOptions.build(aggregator, ...).",
                DeprecationWarning,
                stacklevel=2,
            )
            options = HookOptions.build(options, **legacy)
        elif legacy:
            raise TypeError(f"Unexpected arguments {sorted(legacy)} with a HookOptions record.")
        extra = {} if bucket_cap_bytes is None else {"bucket_cap_bytes": int(bucket_cap_bytes)}
        super().__init__(
            options, process_group=process_group, param_names=param_names, layout_extra=extra
        )
        self.transport = TRANSPORTS[self.options.transport](
            self.channels, self.rank, self.world_size
        )
        # Only parameters some slot left unused need the repair, and only with several slots.
        self._repair_idle = bool(find_unused_parameters) and self.slots_per_rank > 1
        self._step = self._new_step()

    @property
    def slot_index(self) -> int:
        """Which microbatch of the current step the next backward pass is (0-based)."""
        return len(self._step.slots)

    # -- the hook's side ---------------------------------------------------------------------

    def on_bucket(self, bucket: dist.GradBucket) -> Future:
        """Handles one DDP bucket; called by :func:`~lightning_bmoo.comm.bucket_moo_hook`.

        Raises:
            RuntimeError: when a collective fails (another rank stalled past the timeout or
                died), or the ranks are out of step.
        """
        try:
            return self._on_bucket(bucket)
        except PeerError as error:
            raise self._collective_failed(error, self._step.slot) from error

    def _on_bucket(self, bucket: dist.GradBucket) -> Future:
        step = self._step
        clock = step.clock
        clock.start()
        buffer = bucket.buffer()
        params = bucket.parameters()
        if step.bucket_calls == 0:
            step.slot = len(step.slots)
            step.announced = self._announce_slot(step.slot)
            if self.world_size > 1:
                nbytes = (self.world_size - 1) * SLOT_MESSAGE_BYTES
                step.counter.add("slots", nbytes, nbytes)
            clock.lap("slots")
        step.bucket_calls += 1
        slot = step.slot
        # The slot message travels while the first bucket is sent; every rank reads (and
        # checks) it at its second bucket, before any gradient is combined.
        if step.announced is not None and (step.bucket_calls > 1 or bucket.is_last()):
            step.slots.append(step.announced.wait())
            step.announced = None
            clock.lap("slots")
        if slot < self.slots_per_rank - 1:
            _, sent = step.exchanges.send(slot, params, buffer)
            # The next slot must accumulate from zero so that its gradient stays apart.
            future = sent.then(functools.partial(self._zeroed, buffer, slot))
            clock.lap("exchange")
        else:
            if step.slot_tasks is None and step.announced is None:
                self._begin_slot_tasks()
            # Two stages, one hook call apart (see _start_sums): the bucket before this one
            # starts the sum of its Gramians, the one before that, whose sum had the backward
            # computation of a bucket to arrive, is solved and combined (so is any whose sum
            # arrived sooner). Before this bucket's exchange starts, so that the hook holds
            # the rows of two buckets at most.
            earlier = len(step.jobs)
            if earlier:
                self._start_sums(earlier)
                self._solve_ready(earlier - 1)
                clock.lap("other")
            exchange, _ = step.exchanges.send(slot, params, buffer)
            clock.lap("exchange")
            job = _Job(exchange, self._segments(params), buffer, params)
            step.jobs.append(job)
            if bucket.is_last():  # drains every bucket
                self._start_sums(earlier + 1)
                self._solve_ready(earlier + 1)
                if self.granularity == "global":
                    self._finish_global()
            future = job.future
        if bucket.is_last():
            self._end_backward()
        clock.lap("other")
        return future

    def _new_step(self) -> _Step:
        counter = CommCounter()
        return _Step(SlotExchanges(self.transport, self.slots_per_rank, counter), counter)

    def _begin_slot_tasks(self) -> None:
        step = self._step
        step.slot_tasks, step.stats = self._begin_step_stats(step.slots)
        W, K = self.world_size, self.slots_per_rank
        order = [r * K + k for k in range(K) for r in range(W)]
        step.averaging = step.slot_tasks.averaging[:, order]
        step.identity = step.slot_tasks.identity and order == sorted(order)

    def _zeroed(self, buffer: Tensor, slot: int, sent: Future) -> Tensor:
        """``buffer`` zeroed once its slot is sent (or the error the hook raises for a failed
        collective, surfacing in DDP's wait)."""
        try:
            with peers():
                sent.value()
        except PeerError as error:
            raise self._collective_failed(error, slot) from error
        return buffer.zero_()

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

    def _partials(self, job: _Job) -> Tensor:
        """This rank's share of the job's Gramians (and idle flags), as one flat vector.

        ``S x T x T`` partial Gramians, then, when idle parameters are repaired, one number per
        parameter: how many of this rank's exchanged last-slot elements of it are nonzero.
        Summed over ranks by the transport, both arrive in one collective.
        """
        step = self._step
        assert job.exchange is not None and step.slot_tasks is not None
        step.clock.lap("other")
        rows = job.exchange.rows()
        step.clock.lap("wait")
        lo, hi = job.exchange.lo, job.exchange.hi
        segments, device = job.segments, rows[0].device
        if len(segments) == 1 and segments[0].start <= lo and segments[0].end >= hi:
            # A bucket solved as one group (the default): its Gramian, without a stack of one
            # to fill (each small op costs microseconds, paid per bucket).
            out = row_gramian(rows).unsqueeze(0)
        else:
            R = sum(block.shape[0] for block in rows)
            out = torch.zeros(len(segments), R, R, dtype=torch.float64, device=device)
            for i, seg in enumerate(segments):
                a, b = max(seg.start, lo) - lo, min(seg.end, hi) - lo
                if b > a:
                    row_gramian([block[:, a:b] for block in rows], out=out[i])
        if not step.identity:
            assert step.averaging is not None
            with one_thread():  # T x WK products: tiny
                out = task_gramian(out, step.averaging.to(device))
        partials = out.flatten()
        if self._repair_idle:
            partials = torch.cat([partials, self._last_slot_activity(job, rows[-1], lo, hi)])
        step.clock.lap("gramian")
        return partials

    def _last_slot_activity(self, job: _Job, last: Tensor, lo: int, hi: int) -> Tensor:
        """Per parameter, how many of ``last`` (every rank's last slot over ``[lo, hi)``)'s
        elements of it are nonzero."""
        nonzero = (last != 0).any(0).to(torch.float64)
        counts = torch.zeros(len(job.params), dtype=torch.float64, device=last.device)
        offset = 0
        for i, p in enumerate(job.params):
            a, b = max(offset, lo) - lo, min(offset + p.numel(), hi) - lo
            if b > a:
                counts[i] = nonzero[a:b].sum()
            offset += p.numel()
        return counts

    def _start_sums(self, upto: int) -> None:
        """Starts summing over ranks the partial Gramians of the jobs before ``upto``.

        The sum is where the ranks meet (each must have reached that bucket): read at once,
        the faster rank waited for the slower one at every bucket; read one hook call later,
        the wait is covered by a bucket of backward computation (docs/benchmarks.md has the
        measurement).
        """
        step = self._step
        for job in step.jobs[step.reducing : upto]:
            partials = self._partials(job)
            job.summed = self.transport.start_reduce(partials, step.counter)
            step.clock.lap("reduce")
        step.reducing = max(step.reducing, upto)

    def _solve_ready(self, upto: int) -> None:
        """Solves and combines, in bucket order, the jobs before ``upto`` (their sums started),
        and the jobs after them whose sums have already arrived (the gather transport's
        always have: it sums nothing over ranks)."""
        step = self._step
        for i in range(step.solved, len(step.jobs)):
            summed = step.jobs[i].summed
            if i >= upto and (summed is None or not summed.arrived()):
                break
            self._solve_job(step.jobs[i])
            step.solved = i + 1

    def _solve_job(self, job: _Job) -> None:
        """Reads the job's summed Gramians; unless global, solves and combines its groups."""
        step = self._step
        assert step.stats is not None and step.slot_tasks is not None and job.summed is not None
        T = len(step.slot_tasks.tasks)
        clock = step.clock
        clock.lap("other")
        summed, job.summed = job.summed.wait(), None
        clock.lap("reduce")
        S = len(job.segments)
        grams = summed[: S * T * T].view(S, T, T)
        if self.slots_per_rank > 1:
            grams = grams * float(self.slots_per_rank) ** 2
        # Partial products summed over ranks and chunks are symmetric only to rounding;
        # exactly symmetric, they need no validation in the solve.
        job.gramians = (grams + grams.transpose(1, 2)) / 2
        if self._repair_idle:
            job.idle = (summed[S * T * T :] == 0).tolist()
        if self.granularity != "global":
            clock.lap("other")
            with one_thread():
                groups = [
                    self._solve(g, step.stats, seg.key, seg.end - seg.start, seg.names)
                    for g, seg in zip(job.gramians.unbind(), job.segments)
                ]
            step.stats.groups.extend(groups)
            clock.lap("solve")
            self._finish(job, torch.stack([group.weights for group in groups]))

    def _finish_global(self) -> None:
        step = self._step
        assert step.stats is not None
        parts = [
            (seg.key, seg.end - seg.start, gram, seg.names)
            for job in step.jobs
            for gram, seg in zip(job.gramians.unbind(), job.segments)
        ]
        step.clock.lap("other")
        with one_thread():
            solved = self._solve_global(step.stats, parts)
        step.clock.lap("solve")
        for job in step.jobs:
            self._finish(job, solved.weights.expand(len(job.segments), -1))

    def _finish(self, job: _Job, weights: Tensor) -> None:
        """Combines the job's rows with ``weights`` (one row of ``T`` per segment) and starts
        delivering the bucket."""
        step = self._step
        assert job.exchange is not None and step.slot_tasks is not None
        exchange, job.exchange = job.exchange, None
        rows = exchange.rows()
        lo, hi = exchange.lo, exchange.hi
        step.counter.release(exchange.nbytes)
        # Slot weights: task weight spread over the task's slots, times K so that the update
        # is a combination of raw microbatch gradients (Lightning divides the loss by K).
        assert step.averaging is not None
        slot_weights = weights @ (step.averaging * float(self.slots_per_rank))
        pieces = [(max(seg.start, lo) - lo, min(seg.end, hi) - lo) for seg in job.segments]
        kept = [i for i, (a, b) in enumerate(pieces) if b > a]
        if len(kept) < len(pieces):
            slot_weights, pieces = slot_weights[kept], [pieces[i] for i in kept]
        clock = step.clock

        def combined(out: Tensor) -> None:
            clock.lap("other")
            combine_ranges(rows, slot_weights, pieces, out)
            clock.lap("combine")

        result = self.transport.finish(combined, job.bucket, step.counter)
        clock.lap("gather")
        target = job.future
        failed = functools.partial(self._collective_failed, slot=len(step.slots) - 1)

        def deliver(done: Future) -> None:
            try:
                with peers():
                    value = done.value()
            except PeerError as error:  # surfaces in DDP's wait instead of a hang
                target.set_exception(failed(error))
            else:
                target.set_result(value)

        result.add_done_callback(deliver)

    def _end_backward(self) -> None:
        self._backwards += 1
        step = self._step
        step.bucket_calls = 0
        self._language = None
        if len(step.slots) < self.slots_per_rank:
            return
        stats = step.stats
        assert stats is not None
        if self._repair_idle and any(any(job.idle) for job in step.jobs):
            # Runs when this backward pass ends (DDP's own finalizer is queued after it).
            jobs = list(step.jobs)
            torch.autograd.Variable._execution_engine.queue_callback(
                lambda: _repair_idle_grads(jobs)
            )
        step.clock.lap("other")
        stats.seconds = dict(step.clock.seconds)
        self._complete_step(stats, step.counter, sum(stats.seconds.values()))
        self._step = self._new_step()


def _repair_idle_grads(jobs: list[_Job]) -> None:
    """Writes the update into the ``.grad`` of parameters no rank used in the last slot.

    DDP copies a bucket's result into ``.grad`` only for parameters some rank used in the
    backward pass that produced it; a per-language head used in an earlier slot keeps the
    zeros the hook handed back for that slot. Parameters whose ``.grad`` is ``None`` were used
    in no slot at all: their update is zero and they stay ``None``, as under plain DDP. For a
    parameter that was used but had a zero gradient, DDP writes the same values.
    """
    for job in jobs:
        if not any(job.idle):
            continue
        result = job.future.wait()
        offset = 0
        with torch.no_grad():
            for p, idle in zip(job.params, job.idle):
                if idle and p.grad is not None:
                    p.grad.copy_(result[offset : offset + p.numel()].view(p.shape))
                offset += p.numel()
