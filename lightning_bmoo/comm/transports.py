"""How slot gradients travel between ranks: ``sharded`` (the default) or ``gather``.

A transport does three things for a bucket: ``exchange`` gives this rank the rows of every
slot over some range of the bucket, ``reduce`` sums partial Gramians over ranks, and
``finish`` turns this rank's combined range into the full bucket. Byte counts assume ring
algorithms for all-reduce and all-gather, and direct sends for all-to-all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor
from torch.futures import Future


class CommCounter:
    """Bytes sent and received and collectives issued, per collective kind."""

    __slots__ = ("collectives", "received", "sent")

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.collectives: Counter[str] = Counter()

    def add(self, kind: str, sent: int, received: int) -> None:
        """Records one collective."""
        self.sent[kind] += sent
        self.received[kind] += received
        self.collectives[kind] += 1


def _completed(value: Tensor) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


class Exchange:
    """Rows of every slot over ``[lo, hi)`` of a bucket, possibly still in flight."""

    __slots__ = ("_rows", "_work", "hi", "lo")

    def __init__(self, rows: Tensor, lo: int, hi: int, work: dist.Work | None) -> None:
        self._rows, self.lo, self.hi, self._work = rows, lo, hi, work

    def rows(self) -> Tensor:
        """Waits for the exchange and returns the ``WK x (hi - lo)`` rows."""
        if self._work is not None:
            self._work.wait()
            self._work = None
        return self._rows


class Transport(ABC):
    """Moves slot gradients between the ranks of ``group``."""

    name: str

    def __init__(self, group: dist.ProcessGroup | None, rank: int, world_size: int) -> None:
        self.group, self.rank, self.world_size = group, rank, world_size

    @abstractmethod
    def exchange(self, local: Tensor, counter: CommCounter) -> Exchange:
        """Starts moving this rank's ``K x n`` slot rows; returns the pending exchange."""

    def reduce(self, partial: Tensor, counter: CommCounter) -> Tensor:
        """Sums ``partial`` (any shape, float64) over ranks."""
        return partial

    @abstractmethod
    def finish(
        self, combined: Callable[[Tensor], None], numel: int, like: Tensor, counter: CommCounter
    ) -> Future:
        """Returns a future of the full combined bucket (``numel`` elements).

        ``combined(out)`` writes this rank's combined range (``exchange``'s ``[lo, hi)``)
        into ``out``.
        """


class GatherTransport(Transport):
    """All-gather every slot's whole bucket; every rank solves and combines everything.

    Traffic per rank: ``(W - 1) * K * n`` elements sent and received, W/2 times an
    all-reduce at K = 1. Simple, and the reference the sharded transport is tested against.
    """

    name = "gather"

    def exchange(self, local: Tensor, counter: CommCounter) -> Exchange:
        K, n = local.shape
        if self.world_size == 1:
            return Exchange(local, 0, n, None)
        out = torch.empty(self.world_size * K * n, dtype=local.dtype, device=local.device)
        work = dist.all_gather_single(out, local.reshape(-1), group=self.group, async_op=True)
        nbytes = (self.world_size - 1) * K * n * local.element_size()
        counter.add("all_gather", nbytes, nbytes)
        return Exchange(out.view(self.world_size * K, n), 0, n, work)

    def finish(
        self, combined: Callable[[Tensor], None], numel: int, like: Tensor, counter: CommCounter
    ) -> Future:
        out = torch.empty(numel, dtype=like.dtype, device=like.device)
        combined(out)
        return _completed(out)


class ShardedTransport(Transport):
    """All-to-all so that rank j holds shard j of every slot; all-gather the combined shards.

    Shards are ``ceil(n / W)`` elements (the last ones shorter, possibly empty). Traffic per
    rank at K = 1 is ``2 (W - 1) / W * n`` elements, exactly a ring all-reduce, plus the
    ``T x T`` partial Gramians.
    """

    name = "sharded"

    def _bounds(self, n: int) -> tuple[int, list[int]]:
        chunk = -(-n // self.world_size)
        sizes = [max(0, min(chunk, n - j * chunk)) for j in range(self.world_size)]
        return chunk, sizes

    def exchange(self, local: Tensor, counter: CommCounter) -> Exchange:
        K, n = local.shape
        if self.world_size == 1:
            return Exchange(local, 0, n, None)
        chunk, sizes = self._bounds(n)
        lo = min(n, self.rank * chunk)
        m = sizes[self.rank]
        # all_to_all sends contiguous pieces per destination: shard-major order.
        if K == 1:
            send = local.reshape(-1)
        else:
            send = torch.cat(
                [local[:, j * chunk : j * chunk + s].reshape(-1) for j, s in enumerate(sizes)]
            )
        out = torch.empty(self.world_size * K * m, dtype=local.dtype, device=local.device)
        work = dist.all_to_all_single(
            out,
            send,
            output_split_sizes=[K * m] * self.world_size,
            input_split_sizes=[K * s for s in sizes],
            group=self.group,
            async_op=True,
        )
        size = local.element_size()
        counter.add("all_to_all", (K * n - K * m) * size, (self.world_size - 1) * K * m * size)
        return Exchange(out.view(self.world_size * K, m), lo, lo + m, work)

    def reduce(self, partial: Tensor, counter: CommCounter) -> Tensor:
        if self.world_size == 1:
            return partial
        dist.all_reduce(partial, group=self.group)
        nbytes = 2 * (self.world_size - 1) * partial.numel() * partial.element_size()
        counter.add("all_reduce", nbytes // self.world_size, nbytes // self.world_size)
        return partial

    def finish(
        self, combined: Callable[[Tensor], None], numel: int, like: Tensor, counter: CommCounter
    ) -> Future:
        if self.world_size == 1:
            out = torch.empty(numel, dtype=like.dtype, device=like.device)
            combined(out)
            return _completed(out)
        chunk, sizes = self._bounds(numel)
        mine = torch.zeros(chunk, dtype=like.dtype, device=like.device)
        combined(mine[: sizes[self.rank]])
        out = torch.empty(self.world_size * chunk, dtype=like.dtype, device=like.device)
        work = dist.all_gather_single(out, mine, group=self.group, async_op=True)
        nbytes = (self.world_size - 1) * chunk * like.element_size()
        counter.add("all_gather", nbytes, nbytes)
        return work.get_future().then(lambda _: out[:numel])


TRANSPORTS: dict[str, type[Transport]] = {"sharded": ShardedTransport, "gather": GatherTransport}
