"""How slot gradients travel between ranks: ``sharded`` (the default) or ``gather``.

A transport does three things for a bucket: ``exchange`` gives this rank the rows of every
slot over some range of the bucket, ``reduce`` sums partial Gramians over ranks, and
``finish`` turns this rank's combined range into the full bucket. Byte counts assume ring
algorithms for all-reduce and all-gather, and direct sends for all-to-all.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future


class CommCounter:
    """Bytes sent and received and collectives issued, per collective kind."""

    __slots__ = ("collectives", "live", "peak", "received", "sent")

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.collectives: Counter[str] = Counter()
        self.live = 0
        self.peak = 0

    def add(self, kind: str, sent: int, received: int) -> None:
        """Records one collective."""
        self.sent[kind] += sent
        self.received[kind] += received
        self.collectives[kind] += 1

    def allocate(self, nbytes: int) -> None:
        """Records that the hook allocated a gradient-sized buffer of ``nbytes``."""
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def release(self, nbytes: int) -> None:
        """Records that such a buffer was dropped."""
        self.live -= nbytes


class PeerError(RuntimeError):
    """A collective failed: another rank stalled past the group's timeout, died or left."""


@contextlib.contextmanager
def peers() -> Iterator[None]:
    """Turns the error of a collective inside the block into a :class:`PeerError`."""
    try:
        yield
    except PeerError:
        raise
    except RuntimeError as error:  # gloo/NCCL report timeouts and lost peers as RuntimeError
        raise PeerError(f"{type(error).__name__}: {error}") from error


# Up to this many ranks, CPU buckets are gathered by one broadcast per rank (see
# ShardedTransport._gather).
_BROADCAST_MAX_RANKS = 4


def _completed(value: Tensor) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class Exchange:
    """Rows of every rank's slots over ``[lo, hi)`` of one bucket, possibly still in flight.

    The rows come in blocks (one per :meth:`Transport.block` call), each holding some slots
    of every rank, slot-major: row ``k * W + r`` of a block is its slot ``k`` of rank ``r``.
    ``nbytes`` is what the blocks allocated (released when the state drops the exchange).
    """

    __slots__ = ("_works", "blocks", "hi", "lo", "nbytes")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.blocks: list[Tensor] = []
        self.nbytes = 0
        self._works: list[dist.Work] = []

    def rows(self) -> list[Tensor]:
        """Waits for every transfer into the exchange and returns its blocks of rows."""
        if self._works:
            with peers():
                for work in self._works:
                    work.wait()
            self._works = []
        return self.blocks


class Summed:
    """A sum over ranks, possibly still in flight: :meth:`wait` returns it."""

    __slots__ = ("_tensor", "_work")

    def __init__(self, tensor: Tensor, work: dist.Work | None = None) -> None:
        self._tensor, self._work = tensor, work

    def arrived(self) -> bool:
        """Whether :meth:`wait` would return without waiting."""
        return self._work is None or self._work.is_completed()

    def wait(self) -> Tensor:
        """Waits for the sum (a failed collective raises :class:`PeerError`) and returns it."""
        if self._work is not None:
            with peers():
                self._work.wait()
            self._work = None
        return self._tensor


class Channels(NamedTuple):
    """The process groups the hook talks on, each with its own deterministic order.

    Attributes:
        exchange: DDP's group; slot rows, in bucket order.
        gather: combined shards, in the order buckets are solved.
        control: slot languages and ``T x T`` Gramians: small, blocking messages that must
            not queue behind large transfers.
    """

    exchange: dist.ProcessGroup | None
    gather: dist.ProcessGroup | None
    control: dist.ProcessGroup | None


_SIDE_GROUPS: dict[tuple[tuple[int, ...], timedelta, str | None], tuple[object, Channels]] = {}


def group_timeout(group: dist.ProcessGroup | None) -> timedelta:
    """The timeout of ``group``'s collectives (the default group's when ``None``).

    Read from the group's backends (what ``init_process_group(timeout=...)`` or
    ``new_group(timeout=...)`` set); the backend's default when no backend says.
    """
    pg = group if group is not None else dist.distributed_c10d._get_default_group()
    timeouts = []
    for device in pg._device_types:
        try:
            timeouts.append(pg._get_backend(device).options._timeout)
        except (AttributeError, RuntimeError):  # a backend without options (e.g. fake)
            continue
    if timeouts:
        return min(timeouts)
    return dist.distributed_c10d._get_default_timeout(dist.get_backend(pg))


def open_channels(group: dist.ProcessGroup | None) -> Channels:
    """Returns the channels for DDP's ``group``, creating two side groups once per group.

    The side groups get ``group``'s timeout, so that a stalled or dead rank makes every
    collective of the hook fail within the timeout the user configured, as DDP's own do
    (``dist.new_group`` would otherwise default to 30 minutes). The control group carries
    CPU tensors (slot messages, ``T x T`` Gramians for the CPU solves): where ``group`` has no
    CPU backend (``init_process_group("nccl")``, Lightning's choice on GPUs) it is a gloo
    group of the same ranks.

    Every rank of the default group must call this at the same point (as for any
    ``dist.new_group``); registering the hook does, on every rank.
    """
    if dist.get_world_size(group) == 1:
        return Channels(group, group, group)
    ranks = tuple(dist.get_process_group_ranks(group or dist.group.WORLD))
    timeout = group_timeout(group)
    world = dist.distributed_c10d._get_default_group()
    devices = (group or world)._device_types
    control_backend = None if torch.device("cpu") in devices else "gloo"
    key = (ranks, timeout, control_backend)
    cached = _SIDE_GROUPS.get(key)
    # A cached pair belongs to a default group that may have been destroyed since.
    if cached is None or cached[0] is not world:
        side = Channels(
            group,
            dist.new_group(list(ranks), timeout=timeout),
            dist.new_group(list(ranks), timeout=timeout, backend=control_backend),
        )
        _SIDE_GROUPS[key] = (world, side)
        return side
    return Channels(group, cached[1].gather, cached[1].control)


class Transport(ABC):
    """Moves slot gradients between the ranks of ``channels``.

    For a bucket of ``n`` elements: :meth:`open` an exchange over this rank's range, give it
    a :meth:`block` of rows for some slots, :meth:`send` each slot's row into its place as
    soon as its backward pass produced it, :meth:`reduce` the partial Gramians, and
    :meth:`finish` the combined range into the whole bucket.
    """

    name: str

    def __init__(self, channels: Channels, rank: int, world_size: int) -> None:
        self.channels, self.rank, self.world_size = channels, rank, world_size
        self.group = channels.exchange

    @abstractmethod
    def bounds(self, n: int) -> tuple[int, int]:
        """This rank's range ``[lo, hi)`` of a bucket of ``n`` elements."""

    def open(self, n: int) -> Exchange:
        """An empty exchange over this rank's range of a bucket of ``n`` elements."""
        return Exchange(*self.bounds(n))

    def block(self, exchange: Exchange, slots: int, like: Tensor, counter: CommCounter) -> Tensor:
        """Allocates rows for ``slots`` slots of every rank, appended to ``exchange``'s blocks.

        Returns the ``slots * W x (hi - lo)`` block; slot ``k`` goes to rows
        ``[k * W, (k + 1) * W)`` through :meth:`send`.
        """
        m = exchange.hi - exchange.lo
        block = torch.empty(slots * self.world_size, m, dtype=like.dtype, device=like.device)
        nbytes = block.numel() * block.element_size()
        counter.allocate(nbytes)
        exchange.blocks.append(block)
        exchange.nbytes += nbytes
        return block

    def send(self, row: Tensor, out: Tensor, exchange: Exchange, counter: CommCounter) -> Future:
        """Starts moving one slot's ``row`` (1-D, ``n``) so that ``out`` (``W x (hi - lo)``,
        rows of one of ``exchange``'s blocks) receives every rank's row over ``[lo, hi)``.

        Returns a future that completes once ``row`` may be overwritten.
        """
        if self.world_size == 1:
            out[0].copy_(row)
            return _completed(row)
        with peers():
            work = self._send(row, out, exchange, counter)
        exchange._works.append(work)
        return work.get_future()

    def exchange(self, row: Tensor, counter: CommCounter) -> Exchange:
        """An exchange of one slot's ``row`` (1-D), started now: its one block holds every
        rank's row over this rank's range (FSDP hands over each slot's unit this way)."""
        exchange = self.open(row.numel())
        if self.world_size == 1:
            exchange.blocks.append(row.view(1, -1))  # the row itself: nothing to move
            return exchange
        self.send(row, self.block(exchange, 1, row, counter), exchange, counter)
        return exchange

    @abstractmethod
    def _send(
        self, row: Tensor, out: Tensor, exchange: Exchange, counter: CommCounter
    ) -> dist.Work:
        """Launches the collective of :meth:`send` (world size > 1)."""

    @abstractmethod
    def recover(self, rows: Tensor, n: int, counter: CommCounter) -> Tensor:
        """A new tensor holding this rank's own row (``n`` elements) of a slot sent with
        :meth:`send` into ``rows`` (``W x (hi - lo)``, complete); blocking. For when DDP
        re-bucketed the parameters in the middle of a step."""

    def reduce(self, partial: Tensor, counter: CommCounter) -> Tensor:
        """Sums ``partial`` (any shape, float64) over ranks; blocking."""
        return self.start_reduce(partial, counter).wait()

    def start_reduce(self, partial: Tensor, counter: CommCounter) -> Summed:
        """Starts summing ``partial`` (any shape, float64) over ranks; the sum is on the CPU."""
        return Summed(partial.cpu())

    @abstractmethod
    def finish(
        self, combined: Callable[[Tensor], None], bucket: Tensor, counter: CommCounter
    ) -> Future:
        """Returns a future of the full combined bucket.

        ``combined(out)`` writes this rank's combined range (``exchange``'s ``[lo, hi)``)
        into ``out``. ``bucket`` is DDP's bucket buffer: once exchanged, its content is no
        longer needed, so the result is written into it, which spares a bucket-sized
        allocation per bucket in flight.
        """


class GatherTransport(Transport):
    """All-gather every slot's whole bucket; every rank solves and combines everything.

    Traffic per rank: ``(W - 1) * K * n`` elements sent and received, W/2 times an
    all-reduce at K = 1. Simple, and the reference the sharded transport is tested against.
    """

    name = "gather"

    def bounds(self, n: int) -> tuple[int, int]:
        return 0, n

    def _send(
        self, row: Tensor, out: Tensor, exchange: Exchange, counter: CommCounter
    ) -> dist.Work:
        work = dist.all_gather_single(out.view(-1), row, group=self.group, async_op=True)
        nbytes = (self.world_size - 1) * row.numel() * row.element_size()
        counter.add("all_gather", nbytes, nbytes)
        return work

    def recover(self, rows: Tensor, n: int, counter: CommCounter) -> Tensor:
        return rows[self.rank].clone()

    def finish(
        self, combined: Callable[[Tensor], None], bucket: Tensor, counter: CommCounter
    ) -> Future:
        combined(bucket)
        return _completed(bucket)


class ShardedTransport(Transport):
    """All-to-all so that rank j holds shard j of every slot; gather the combined shards.

    Shards are ``floor(n / W)`` elements, the last one also holding the ``n mod W`` elements
    left over. Every rank's combined shard reaches every rank in place, in DDP's bucket: by a
    broadcast from each rank on CPUs (up to ``_BROADCAST_MAX_RANKS`` ranks), else by an
    all-gather of the equal shards and a broadcast of the tail from the last rank. Traffic per
    rank at K = 1 is ``2 (W - 1) / W * n`` elements, exactly a ring all-reduce, plus the
    ``T x T`` partial Gramians; no buffer beyond the exchanged rows.
    """

    name = "sharded"

    def _sizes(self, n: int) -> tuple[int, list[int]]:
        """The equal shard length, and every rank's shard length (the last one's longer)."""
        base = n // self.world_size
        return base, [base] * (self.world_size - 1) + [n - (self.world_size - 1) * base]

    def bounds(self, n: int) -> tuple[int, int]:
        base, sizes = self._sizes(n)
        return self.rank * base, self.rank * base + sizes[self.rank]

    def _send(
        self, row: Tensor, out: Tensor, exchange: Exchange, counter: CommCounter
    ) -> dist.Work:
        n, m = row.numel(), exchange.hi - exchange.lo
        work = dist.all_to_all_single(
            out.view(-1),
            row,
            output_split_sizes=[m] * self.world_size,
            input_split_sizes=self._sizes(n)[1],
            group=self.group,
            async_op=True,
        )
        size = row.element_size()
        counter.add("all_to_all", (n - m) * size, (self.world_size - 1) * m * size)
        return work

    def recover(self, rows: Tensor, n: int, counter: CommCounter) -> Tensor:
        # The exchange backwards: row r of this rank's shard goes back to rank r.
        own = torch.empty(n, dtype=rows.dtype, device=rows.device)
        m, sizes = rows.shape[1], self._sizes(n)[1]
        with peers():
            dist.all_to_all_single(
                own,
                rows.reshape(-1),
                output_split_sizes=sizes,
                input_split_sizes=[m] * self.world_size,
                group=self.group,
            )
        size = rows.element_size()
        counter.add("all_to_all", (self.world_size - 1) * m * size, (n - m) * size)
        return own

    def start_reduce(self, partial: Tensor, counter: CommCounter) -> Summed:
        # On the control group, which may be CPU only (open_channels); the solves need the
        # numbers on the CPU anyway.
        partial = partial.cpu()
        if self.world_size == 1:
            return Summed(partial)
        with peers():
            work = dist.all_reduce(partial, group=self.channels.control, async_op=True)
        nbytes = 2 * (self.world_size - 1) * partial.numel() * partial.element_size()
        counter.add("all_reduce", nbytes // self.world_size, nbytes // self.world_size)
        return Summed(partial, work)

    def finish(
        self, combined: Callable[[Tensor], None], bucket: Tensor, counter: CommCounter
    ) -> Future:
        lo, hi = self.bounds(bucket.numel())
        # In place: this rank's shard already sits at its offset of the result.
        combined(bucket[lo:hi])
        if self.world_size == 1:
            return _completed(bucket)
        with peers():
            futures = [work.get_future() for work in self._gather(bucket, counter)]
        many = len(futures) > 1
        done = torch.futures.collect_all(futures) if many else futures[0]

        def delivered(finished: Future) -> Tensor:
            for future in finished.value() if many else (finished,):
                future.value()  # the error of a failed collective, for the hook to surface
            return bucket

        return done.then(delivered)

    def _gather(self, bucket: Tensor, counter: CommCounter) -> list[dist.Work]:
        """Starts sending this rank's combined shard of ``bucket`` to every rank, and every
        rank's into its place here."""
        numel, W, size = bucket.numel(), self.world_size, bucket.element_size()
        base, sizes = self._sizes(numel)
        group = self.channels.gather

        def broadcast(piece: Tensor, src: int) -> dist.Work:
            mine = src == self.rank
            n = piece.numel() * size
            counter.add("broadcast", (W - 1) * n if mine else 0, 0 if mine else n)
            return dist.broadcast(piece, group=group, group_src=src, async_op=True)

        if bucket.device.type == "cpu" and W <= _BROADCAST_MAX_RANKS:
            # gloo's all-gather goes through a flat buffer of the whole bucket: an allocation
            # and one more pass over it per bucket. A broadcast from each rank moves the same
            # bytes in place (0.55x the all-gather's CPU time at W = 2, 0.8x at W = 4, equal
            # at W = 8, where the W launches per bucket catch up; benchmarks.md).
            return [
                broadcast(bucket[src * base : src * base + n], src)
                for src, n in enumerate(sizes)
                if n > 0
            ]
        # NCCL's all-gather needs no such buffer (and more ranks, more launches): one
        # all-gather of the equal shards, then the left-over tail (fewer than W elements)
        # broadcast from the last rank.
        works = []
        if base > 0:
            mine = bucket[self.rank * base : (self.rank + 1) * base]
            works.append(
                dist.all_gather_single(bucket[: W * base], mine, group=group, async_op=True)
            )
            counter.add("all_gather", (W - 1) * base * size, (W - 1) * base * size)
        if numel > W * base:
            works.append(broadcast(bucket[W * base :], W - 1))
        return works


TRANSPORTS: dict[str, type[Transport]] = {"sharded": ShardedTransport, "gather": GatherTransport}
