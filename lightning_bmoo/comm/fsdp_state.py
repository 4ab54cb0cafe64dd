"""The FSDP2 comm's state: each unit's reduce-scatter becomes an exchange, a solve, a combination.

FSDP2 calls the comm once per unit and backward pass with the unit's gradient laid out
``[W, m]`` (row ``j``: what rank ``j`` owns). One ``all_to_all`` gives this rank every rank's
copy of its shard: the bytes of a ring reduce-scatter. With ``K > 1`` slots the shard rows
are summed per language and kept, and FSDP gets zeros to accumulate; at the last slot the
unit's partial Gramians are summed over ranks (``T x T`` numbers on the control channel),
every rank solves the same problem, and this rank's shard of the combined update is written
where FSDP expects the reduced gradient. Granularity ``global`` keeps every unit's rows until
the backward pass ends, solves once, and adds each unit's update into the sharded gradients.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .base import HookState
from .fsdp_units import Segment, Unit
from .layout import SLOT_MESSAGE_BYTES, SlotTasks
from .linalg import combine_rows, row_gramian, task_gramian
from .options import HookOptions
from .stats import StepStats
from .transports import CommCounter, PeerError, ShardedTransport

# Fingerprints below 2**18: their squares summed over up to 2**16 ranks stay exact in float64.
_FINGERPRINT = 1 << 18


class _Group(NamedTuple):
    """A range of a unit's shard solved as one MOO problem."""

    key: str
    start: int
    end: int
    numel: int
    names: list[str]


@dataclass
class _Rows:
    """A unit's rows on this rank's shard and the map from them to the step's task rows.

    ``to_tasks`` (``T x R``, float64) averages rows into tasks; ``None`` when each row is
    its own task, in task order. ``nbytes`` is what the rows hold beyond FSDP's buffers.
    """

    rows: Tensor
    to_tasks: Tensor | None
    nbytes: int


@dataclass
class _Pending:
    """A unit waiting for the global solve (granularity ``global``)."""

    unit: Unit
    segments: tuple[Segment, ...]
    group: _Group
    rows: _Rows
    partial: Tensor
    stream: object  # the device stream the rows were made on (CUDA), else None


@dataclass
class _Stash:
    """A unit's earlier slots: the sum of each language's shard rows, and their slot tasks."""

    segments: tuple[Segment, ...]
    sums: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class _Step:
    """Scratch of the step in progress; replaced by a fresh one when the step completes."""

    slots: list[list[str]] = field(default_factory=list)  # per slot so far: every rank's language
    slot_tasks: SlotTasks | None = None
    stats: StepStats | None = None
    stash: dict[str, _Stash] = field(default_factory=dict)  # by unit
    pending: list[_Pending] = field(default_factory=list)
    counter: CommCounter = field(default_factory=CommCounter)
    seconds: float = 0.0
    calls: int = 0  # units reduced in the current backward pass
    order: int = 0  # CRC-32 of the keys of the units reduced so far in the step, in order


class FSDPBucketMOOState(HookState):
    """State of the bucket-MOO comm installed on a model's FSDP2 units.

    Create it with :func:`~lightning_bmoo.comm.register_fsdp_bucket_moo_hook`; use it as the
    DDP hook's state: declare each microbatch's language with :meth:`slot` around its backward
    pass; after ``slots_per_rank`` backward passes the sharded gradients hold the MOO update and
    :attr:`last_step` describes it. One group per unit (``bucket``), per parameter
    (``parameter``) or for the whole model (``global``).

    Args:
        options: the hook's options (:class:`~lightning_bmoo.comm.HookOptions`); the transport
            must be ``"sharded"``.
        units: the model's units (:func:`~lightning_bmoo.comm.fsdp_units.find_units`).
        param_names: name of each parameter, by ``id(parameter)``.
    """

    def __init__(
        self, options: HookOptions, *, units: list[Unit], param_names: dict[int, str]
    ) -> None:
        super().__init__(
            options,
            process_group=units[0].process_group,
            param_names=param_names,
            layout_extra={"fsdp_units": [unit.key for unit in units]},
        )
        self.units = units
        self.transport = ShardedTransport(self.channels, self.rank, self.world_size)
        self._step = _Step()

    @property
    def slot_index(self) -> int:
        """Which microbatch of the current step the next backward pass is (0-based)."""
        return len(self._step.slots)

    # -- FSDP's side -------------------------------------------------------------------------

    def on_reduce_scatter(
        self, unit: Unit, output: Tensor, input: Tensor, group: dist.ProcessGroup, op: object
    ) -> None:
        """Replaces one unit's reduce-scatter: writes this rank's shard of the update (or zeros).

        Raises:
            RuntimeError: when a collective fails (another rank stalled past the timeout or
                died), the ranks are out of step, or FSDP was reconfigured after installation.
        """
        try:
            self._on_reduce_scatter(unit, output, input, group, op)
        except PeerError as error:
            raise self._collective_failed(error, max(0, len(self._step.slots) - 1)) from error

    def _on_reduce_scatter(
        self, unit: Unit, output: Tensor, input: Tensor, group: dist.ProcessGroup, op: object
    ) -> None:
        start = time.perf_counter()
        step = self._step
        unit.check_reduction(group, op)
        if step.calls == 0:
            self._begin_backward()
        step.calls += 1
        step.order = zlib.crc32(unit.key.encode(), step.order)
        segments = unit.segments(output.numel())
        exchange = self.transport.exchange(input, step.counter)
        rows = exchange.rows()[0]
        languages = step.slots[-1]
        if len(step.slots) < self.slots_per_rank:
            self._keep(unit.key, segments, rows, languages)
            step.counter.release(exchange.nbytes)
            output.zero_()  # FSDP accumulates it; the next slot's rows stay apart
        else:
            if step.slot_tasks is None:
                step.slot_tasks, step.stats = self._begin_step_stats(step.slots)
            task_rows = self._task_rows(unit.key, segments, rows, exchange.nbytes, languages)
            groups = self._groups(unit, segments)
            partial = self._partials(task_rows, groups)
            if self.granularity == "global":
                output.zero_()  # the update is added at the end of the backward pass
                stream = torch.cuda.current_stream(rows.device) if rows.is_cuda else None
                step.pending.append(_Pending(unit, segments, groups[0], task_rows, partial, stream))
            else:
                grams = self._reduce(partial)
                solved = [
                    self._solve(gram, step.stats, g.key, g.numel, g.names)
                    for gram, g in zip(grams, groups)
                ]
                step.stats.groups.extend(solved)
                self._combine(task_rows, groups, [s.weights for s in solved], output)
                step.counter.release(task_rows.nbytes)
        step.seconds += time.perf_counter() - start

    def _begin_backward(self) -> None:
        step = self._step
        step.slots.append(self._exchange_slot(len(step.slots)))
        if self.world_size > 1:
            nbytes = (self.world_size - 1) * SLOT_MESSAGE_BYTES
            step.counter.add("slots", nbytes, nbytes)
        # Runs after FSDP's own end-of-backward callback, queued when the backward began.
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    # -- rows ------------------------------------------------------------------------------

    def _keep(
        self, key: str, segments: tuple[Segment, ...], rows: Tensor, languages: list[str]
    ) -> None:
        """Adds an earlier slot's rows to the unit's per-language sums."""
        counter = self._step.counter
        stash = self._step.stash.setdefault(key, _Stash(segments))
        _check_same_parameters(key, stash.segments, segments)
        for row, language in zip(rows, languages):
            if language in stash.sums:
                stash.sums[language] += row
            else:
                stash.sums[language] = row.clone()
                counter.allocate(row.numel() * row.element_size())

    def _task_rows(
        self,
        key: str,
        segments: tuple[Segment, ...],
        rows: Tensor,
        nbytes: int,
        languages: list[str],
    ) -> _Rows:
        """The rows the unit's tasks are made of, at the last slot."""
        step = self._step
        slot_tasks = step.slot_tasks
        assert slot_tasks is not None
        tasks = slot_tasks.tasks
        if self.slots_per_rank == 1:
            return _Rows(rows, None if slot_tasks.identity else slot_tasks.averaging, nbytes)
        # Per-language sums of all slots: earlier ones from the stash, the last one here.
        index = {language: t for t, language in enumerate(tasks)}
        out = rows.new_zeros(len(tasks), rows.shape[1])
        counter = step.counter
        counter.allocate(out.numel() * out.element_size())
        stash = step.stash.pop(key, None)
        if stash is not None:
            _check_same_parameters(key, stash.segments, segments)
            for language, row in stash.sums.items():
                out[index[language]] += row
                counter.release(row.numel() * row.element_size())
        for row, language in zip(rows, languages):  # in rank order: deterministic on GPUs too
            out[index[language]] += row
        counter.release(nbytes)
        counts = torch.bincount(slot_tasks.slot_task, minlength=len(tasks)).to(torch.float64)
        to_tasks = None if bool((counts == 1).all()) else torch.diag(1.0 / counts)
        return _Rows(out, to_tasks, out.numel() * out.element_size())

    # -- solve and combine -----------------------------------------------------------------

    def _groups(self, unit: Unit, segments: tuple[Segment, ...]) -> list[_Group]:
        if self.granularity == "parameter":
            return [_Group(s.name, s.start, s.end, s.numel, [s.name]) for s in segments]
        end = segments[-1].end if segments else 0
        names = [s.name for s in segments]
        return [_Group(unit.key, 0, end, sum(s.numel for s in segments), names)]

    def _partials(self, task_rows: _Rows, groups: list[_Group]) -> Tensor:
        """This rank's share of each group's ``T x T`` Gramian (float64)."""
        assert self._step.stats is not None
        T = len(self._step.stats.tasks)
        rows, to_tasks = task_rows.rows, task_rows.to_tasks
        out = torch.zeros(len(groups), T, T, dtype=torch.float64, device=rows.device)
        for i, group in enumerate(groups):
            gram = row_gramian(rows[:, group.start : group.end])
            out[i] = gram if to_tasks is None else task_gramian(gram, to_tasks.to(rows.device))
        return out

    def _reduce(self, partial: Tensor) -> Tensor:
        """Sums partial Gramians over ranks; in raw microbatch units, on the CPU, symmetric.

        Two more numbers ride along, ``f`` and ``f**2`` for a fingerprint ``f`` of the units
        this rank reduced so far in the step: they sum to ``W f`` and ``W f**2`` on every rank
        only if every rank's ``f`` is the same (Cauchy-Schwarz), so ranks that paired
        different units' gradients all fail here, before any update is written.

        Raises:
            RuntimeError: if the ranks reduced different units.
        """
        step = self._step
        f = float(step.order % _FINGERPRINT)
        check = torch.tensor([f, f * f], dtype=torch.float64)
        summed = self.transport.reduce(torch.cat([partial.flatten().cpu(), check]), step.counter)
        W = self.world_size
        if float(summed[-2]) != W * f or float(summed[-1]) != W * f * f:
            raise RuntimeError(
                f"Rank {self.rank}: the ranks reduced different FSDP units in step {self.step}. "
                "A fully_shard unit that only some ranks run (a per-language head or adapter "
                "sharded on its own) pairs the gradients of different units, silently under "
                "FSDP2's own reduce-scatter. Keep per-language parameters inside a unit every "
                "rank runs (do not fully_shard them separately)."
            )
        grams = summed[:-2].view(partial.shape) * float(self.slots_per_rank) ** 2
        # Partial products summed over ranks and chunks are symmetric only to rounding.
        return (grams + grams.transpose(-1, -2)) / 2

    def _combine(
        self, task_rows: _Rows, groups: list[_Group], weights: list[Tensor], out: Tensor
    ) -> None:
        """Writes each group's combination of the rows into ``out`` (this rank's shard)."""
        # Task weights spread over the rows, times K so that the update combines raw
        # microbatch gradients (the loss of each of K microbatches is divided by K).
        K = float(self.slots_per_rank)
        to_tasks = task_rows.to_tasks
        for group, w in zip(groups, weights):
            v = (w if to_tasks is None else to_tasks.T @ w) * K
            a, b = group.start, group.end
            combine_rows(task_rows.rows[:, a:b], v, out[a:b])

    # -- end of the backward pass ------------------------------------------------------------

    def _end_backward(self) -> None:
        step = self._step
        self._backwards += 1
        step.calls = 0
        self._language = None
        if len(step.slots) < self.slots_per_rank:
            return
        assert step.stats is not None
        if step.pending:
            try:
                self._finish_global()
            except PeerError as error:
                raise self._collective_failed(error, len(step.slots) - 1) from error
        self._complete_step(step.stats, step.counter, step.seconds)
        self._step = _Step()

    def _finish_global(self) -> None:
        step = self._step
        assert step.stats is not None
        start = time.perf_counter()
        pending, step.pending = step.pending, []
        streams = {p.stream for p in pending if p.stream is not None}
        for stream in streams:  # the rows and FSDP's gradients were made on the reduce stream
            torch.cuda.current_stream(stream.device).wait_stream(stream)
        grams = self._reduce(torch.stack([p.partial for p in pending]))
        parts = [(p.group.key, p.group.numel, g[0], p.group.names) for p, g in zip(pending, grams)]
        solved = self._solve_global(step.stats, parts)
        for p in pending:
            rows = p.rows.rows
            shard = torch.empty(rows.shape[1], dtype=rows.dtype, device=rows.device)
            self._combine(p.rows, [p.group], [solved.weights], shard)
            _add_to_sharded_grads(p.unit, p.segments, shard)
            if p.stream is not None:  # freed here, on this stream, not the one that made them
                rows.record_stream(torch.cuda.current_stream(shard.device))
            step.counter.release(p.rows.nbytes)
        step.seconds += time.perf_counter() - start


def _check_same_parameters(key: str, before: tuple[Segment, ...], now: tuple[Segment, ...]) -> None:
    """Raises if a unit reduces other parameters than in the step's earlier slots.

    FSDP reduces every parameter of a unit that requires a gradient (zeros for unused ones),
    so the layout changes within a step only if ``requires_grad`` was toggled mid-step.
    """
    if before != now:
        changed = sorted({s.name for s in before} ^ {s.name for s in now})
        raise RuntimeError(
            f"FSDP unit {key!r} reduces other parameters than in this step's earlier slots "
            f"({changed}): requires_grad changed in the middle of a step. Freeze or unfreeze "
            "parameters between optimizer steps."
        )


def _add_to_sharded_grads(unit: Unit, segments: tuple[Segment, ...], shard: Tensor) -> None:
    """Adds a unit's combined shard into its parameters' sharded gradients."""
    where = {s.name: s for s in segments}
    names = dict(zip(map(id, unit.fsdp_params()), unit.param_names))
    with torch.no_grad():
        for fp in unit.fsdp_params():
            segment = where.get(names[id(fp)])
            grad = fp.sharded_param.grad
            if segment is None or grad is None:
                continue
            local = grad._local_tensor
            piece = shard[segment.start : segment.start + local.numel()]
            local.add_(piece.view(local.shape).to(local.device))
