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


def _completed(value: Tensor) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class Exchange:
    """Rows of every slot over ``[lo, hi)`` of a bucket, possibly still in flight.

    ``nbytes`` is what the exchange allocated (released when the state drops it).
    """

    __slots__ = ("_rows", "_work", "hi", "lo", "nbytes")

    def __init__(
        self, rows: Tensor, lo: int, hi: int, work: dist.Work | None, nbytes: int = 0
    ) -> None:
        self._rows, self.lo, self.hi, self._work, self.nbytes = rows, lo, hi, work, nbytes

    def rows(self) -> Tensor:
        """Waits for the exchange and returns the ``WK x (hi - lo)`` rows."""
        if self._work is not None:
            with peers():
                self._work.wait()
            self._work = None
        return self._rows


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


_SIDE_GROUPS: dict[tuple[tuple[int, ...], timedelta], tuple[object, Channels]] = {}


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
    (``dist.new_group`` would otherwise default to 30 minutes).

    Every rank of the default group must call this at the same point (as for any
    ``dist.new_group``); registering the hook does, on every rank.
    """
    if dist.get_world_size(group) == 1:
        return Channels(group, group, group)
    ranks = tuple(dist.get_process_group_ranks(group or dist.group.WORLD))
    timeout = group_timeout(group)
    world = dist.distributed_c10d._get_default_group()
    cached = _SIDE_GROUPS.get((ranks, timeout))
    # A cached pair belongs to a default group that may have been destroyed since.
    if cached is None or cached[0] is not world:
        side = Channels(
            group,
            dist.new_group(list(ranks), timeout=timeout),
            dist.new_group(list(ranks), timeout=timeout),
        )
        _SIDE_GROUPS[ranks, timeout] = (world, side)
        return side
    return Channels(group, cached[1].gather, cached[1].control)


class Transport(ABC):
    """Moves slot gradients between the ranks of ``channels``."""

    name: str

    def __init__(self, channels: Channels, rank: int, world_size: int) -> None:
        self.channels, self.rank, self.world_size = channels, rank, world_size
        self.group = channels.exchange

    @abstractmethod
    def exchange(self, slots: list[Tensor], counter: CommCounter) -> Exchange:
        """Starts moving this rank's ``K`` slot rows (1-D, ``n`` each); returns the exchange."""

    @staticmethod
    def _local(slots: list[Tensor], counter: CommCounter) -> Exchange:
        if len(slots) == 1:
            return Exchange(slots[0].view(1, -1), 0, slots[0].numel(), None)
        rows = torch.stack(slots)
        nbytes = rows.numel() * rows.element_size()
        counter.allocate(nbytes)
        return Exchange(rows, 0, rows.shape[1], None, nbytes)

    def reduce(self, partial: Tensor, counter: CommCounter) -> Tensor:
        """Sums ``partial`` (any shape, float64) over ranks."""
        return partial

    @abstractmethod
    def finish(
        self, combined: Callable[[Tensor], None], bucket: Tensor, counter: CommCounter
    ) -> Future:
        """Returns a future of the full combined bucket.

        ``combined(out)`` writes this rank's combined range (``exchange``'s ``[lo, hi)``)
        into ``out``. ``bucket`` is DDP's bucket buffer: once exchanged, its content is no
        longer needed, so the result is written into it where possible, which spares a
        bucket-sized allocation per bucket in flight.
        """


class GatherTransport(Transport):
    """All-gather every slot's whole bucket; every rank solves and combines everything.

    Traffic per rank: ``(W - 1) * K * n`` elements sent and received, W/2 times an
    all-reduce at K = 1. Simple, and the reference the sharded transport is tested against.
    """

    name = "gather"

    def exchange(self, slots: list[Tensor], counter: CommCounter) -> Exchange:
        if self.world_size == 1:
            return self._local(slots, counter)
        K, n, like = len(slots), slots[0].numel(), slots[0]
        send = slots[0] if K == 1 else torch.cat(slots)
        out = torch.empty(self.world_size * K * n, dtype=like.dtype, device=like.device)
        with peers():
            work = dist.all_gather_single(out, send, group=self.group, async_op=True)
        size = like.element_size()
        counter.add(
            "all_gather", (self.world_size - 1) * K * n * size, (self.world_size - 1) * K * n * size
        )
        allocated = (out.numel() + (send.numel() if K > 1 else 0)) * size
        counter.allocate(allocated)
        return Exchange(out.view(self.world_size * K, n), 0, n, work, allocated)

    def finish(
        self, combined: Callable[[Tensor], None], bucket: Tensor, counter: CommCounter
    ) -> Future:
        # With one rank the rows are views of the bucket itself: combine into a copy.
        out = torch.empty_like(bucket) if self.world_size == 1 else bucket
        combined(out)
        return _completed(out)


class ShardedTransport(Transport):
    """All-to-all so that rank j holds shard j of every slot; all-gather the combined shards.

    Shards are ``floor(n / W)`` elements, the last one also holding the ``n mod W`` elements
    left over. Every rank's combined shard is all-gathered in place into DDP's bucket; the
    left-over tail (fewer than W elements) is broadcast from the last rank. Traffic per rank
    at K = 1 is ``2 (W - 1) / W * n`` elements, exactly a ring all-reduce, plus the ``T x T``
    partial Gramians; no buffer beyond the exchanged rows.
    """

    name = "sharded"

    def _bounds(self, n: int) -> tuple[int, list[int]]:
        """The equal shard length, and every rank's shard length (the last one's longer)."""
        base = n // self.world_size
        return base, [base] * (self.world_size - 1) + [n - (self.world_size - 1) * base]

    def exchange(self, slots: list[Tensor], counter: CommCounter) -> Exchange:
        if self.world_size == 1:
            return self._local(slots, counter)
        K, n, like = len(slots), slots[0].numel(), slots[0]
        base, sizes = self._bounds(n)
        lo = self.rank * base
        m = sizes[self.rank]
        # all_to_all sends one contiguous piece per destination: shard-major order.
        if K == 1:
            send = slots[0]
        else:
            send = torch.cat(
                [row[j * base : j * base + s] for j, s in enumerate(sizes) for row in slots]
            )
        out = torch.empty(self.world_size * K * m, dtype=like.dtype, device=like.device)
        with peers():
            work = dist.all_to_all_single(
                out,
                send,
                output_split_sizes=[K * m] * self.world_size,
                input_split_sizes=[K * s for s in sizes],
                group=self.group,
                async_op=True,
            )
        size = like.element_size()
        counter.add("all_to_all", (K * n - K * m) * size, (self.world_size - 1) * K * m * size)
        allocated = (out.numel() + (send.numel() if K > 1 else 0)) * size
        counter.allocate(allocated)
        return Exchange(out.view(self.world_size * K, m), lo, lo + m, work, allocated)

    def reduce(self, partial: Tensor, counter: CommCounter) -> Tensor:
        if self.world_size == 1:
            return partial
        with peers():
            dist.all_reduce(partial, group=self.channels.control)
        nbytes = 2 * (self.world_size - 1) * partial.numel() * partial.element_size()
        counter.add("all_reduce", nbytes // self.world_size, nbytes // self.world_size)
        return partial

    def finish(
        self, combined: Callable[[Tensor], None], bucket: Tensor, counter: CommCounter
    ) -> Future:
        numel = bucket.numel()
        if self.world_size == 1:
            out = torch.empty_like(bucket)
            combined(out)
            return _completed(out)
        W, size = self.world_size, bucket.element_size()
        base, sizes = self._bounds(numel)
        lo = self.rank * base
        # In place, as NCCL defines all-gather: this rank's shard already sits at its offset.
        combined(bucket[lo : lo + sizes[self.rank]])
        futures = []
        with peers():
            if base > 0:
                mine = bucket[lo : lo + base]
                work = dist.all_gather_single(
                    bucket[: W * base], mine, group=self.channels.gather, async_op=True
                )
                futures.append(work.get_future())
                counter.add("all_gather", (W - 1) * base * size, (W - 1) * base * size)
            tail = numel - W * base
            if tail > 0:
                last = self.rank == W - 1
                work = dist.broadcast(
                    bucket[W * base :], group=self.channels.gather, group_src=W - 1, async_op=True
                )
                futures.append(work.get_future())
                counter.add(
                    "broadcast", (W - 1) * tail * size if last else 0, 0 if last else tail * size
                )
        many = len(futures) > 1
        done = torch.futures.collect_all(futures) if many else futures[0]

        def delivered(finished: Future) -> Tensor:
            for future in finished.value() if many else (finished,):
                future.value()  # the error of a failed collective, for the hook to surface
            return bucket

        return done.then(delivered)


TRANSPORTS: dict[str, type[Transport]] = {"sharded": ShardedTransport, "gather": GatherTransport}
