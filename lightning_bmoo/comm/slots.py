"""Each bucket's slots on their way to the last backward pass: sent as soon as they exist."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.futures import Future

from .transports import CommCounter, Exchange, Transport


class _Open:
    """A bucket's exchange while its earlier slots arrive."""

    __slots__ = ("exchange", "params", "sent")

    def __init__(self, exchange: Exchange, params: list[Tensor]) -> None:
        self.exchange, self.params = exchange, params
        self.sent = 0  # slots sent so far


class SlotExchanges:
    """The exchanges of a step's buckets, keyed by their parameters, filled slot by slot.

    Slot ``k`` of a bucket is sent during its own backward pass, into rows ``[k W, (k + 1) W)``
    of a block for the ``K - 1`` earlier slots, so the traffic of the earlier slots overlaps
    the microbatches that follow, and nothing is copied aside; the last slot gets a block of
    its own. The rows of a bucket are then the two blocks, slot-major (row ``k W + r`` is
    slot ``k`` of rank ``r``).

    DDP re-buckets its parameters once, after its first backward pass. A bucket whose
    parameters were sent under other buckets is met by recovering this rank's own rows of
    the slots sent so far (the exchange run backwards), keeping them by parameter, and
    sending them again under the new bucket: every rank sees the same buckets and does the
    same, in the same order.

    Args:
        transport: moves the rows.
        slots_per_rank: K.
        counter: where traffic and allocations are counted.
    """

    def __init__(self, transport: Transport, slots_per_rank: int, counter: CommCounter) -> None:
        self.transport, self.K, self.counter = transport, slots_per_rank, counter
        self._open: dict[tuple[int, ...], _Open] = {}
        self._stash: dict[int, dict[int, Tensor]] = {}  # recovered rows, by parameter and slot

    def send(self, slot: int, params: list[Tensor], buffer: Tensor) -> tuple[Exchange, Future]:
        """Starts sending ``buffer``, this rank's slot ``slot`` of the bucket of ``params``.

        Returns the bucket's exchange (complete once the last slot was sent) and a future
        that completes once ``buffer`` may be overwritten.
        """
        transport, W = self.transport, self.transport.world_size
        key = tuple(map(id, params))
        entry = self._open.get(key)
        if entry is None or entry.sent != slot:
            if slot > 0:
                self._recover(slot)  # DDP re-bucketed the parameters since the last slot
            entry = self._reopen(slot, params, buffer)
        exchange = entry.exchange
        if slot < self.K - 1:
            rows = exchange.blocks[0][slot * W : (slot + 1) * W]
            entry.sent += 1
            self._open[key] = entry
        else:
            self._open.pop(key, None)
            rows = transport.block(exchange, 1, buffer, self.counter)
        return exchange, transport.send(buffer, rows, exchange, self.counter)

    def _reopen(self, slot: int, params: list[Tensor], buffer: Tensor) -> _Open:
        """A new exchange for the bucket of ``params``, with the slots before ``slot`` sent
        again from the recovered rows."""
        transport, W = self.transport, self.transport.world_size
        entry = _Open(transport.open(buffer.numel()), params)
        if self.K > 1:
            early = transport.block(entry.exchange, self.K - 1, buffer, self.counter)
            for k in range(slot):
                try:
                    row = torch.cat([self._stash[id(p)][k] for p in params])
                except KeyError:
                    raise RuntimeError(
                        f"DDP handed the bucket-MOO hook a bucket at slot {slot} whose "
                        f"parameters it did not see at slot {k}: every backward pass of a step "
                        "must reach every bucket (a bug of the hook or of DDP, not of yours)."
                    ) from None
                transport.send(row, early[k * W : (k + 1) * W], entry.exchange, self.counter)
                entry.sent += 1
        return entry

    def _recover(self, slot: int) -> None:
        """Takes back, by parameter, this rank's rows of every bucket not yet sent at ``slot``."""
        for key, entry in list(self._open.items()):
            if entry.sent > slot:
                continue  # already sent under the current buckets
            del self._open[key]
            exchange, W = entry.exchange, self.transport.world_size
            early = exchange.rows()[0]
            sizes = [p.numel() for p in entry.params]
            for k in range(entry.sent):
                own = self.transport.recover(early[k * W : (k + 1) * W], sum(sizes), self.counter)
                self.counter.allocate(own.numel() * own.element_size())
                for p, view in zip(entry.params, own.split(sizes)):
                    self._stash.setdefault(id(p), {})[k] = view
            self.counter.release(exchange.nbytes)
