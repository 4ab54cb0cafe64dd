"""The step's slot -> language layout, exchanged between ranks, and its task structure."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ..vocabulary import MAX_LANGUAGE_BYTES, check_language_name
from .transports import peers

# A slot message: slots per rank, step, slot, optimizer steps (int64 each), then the name.
_HEADER = 4 * 8
#: Bytes each rank sends per backward pass to announce its slot.
SLOT_MESSAGE_BYTES = _HEADER + MAX_LANGUAGE_BYTES


@dataclass(frozen=True)
class SlotTasks:
    """Which language fills each of the step's ``W * K`` slots, and the tasks they form.

    Attributes:
        slots: language of slot ``s`` (microbatch ``s % K`` of rank ``s // K``).
        tasks: the distinct languages, sorted: the rows of every Gramian.
        slot_task: task index of every slot (int64, length ``W * K``).
        averaging: ``T x WK`` float64 matrix taking slot rows to task rows: slots of one
            language are averaged.
        identity: whether every slot is its own task, in task order (averaging is the identity).
    """

    slots: tuple[str, ...]
    tasks: tuple[str, ...]
    slot_task: Tensor
    averaging: Tensor
    identity: bool

    @classmethod
    def from_slots(cls, slots: list[str] | tuple[str, ...]) -> SlotTasks:
        """Builds the task structure of a list of slot languages."""
        tasks = tuple(sorted(set(slots)))
        index = {language: t for t, language in enumerate(tasks)}
        slot_task = torch.tensor([index[language] for language in slots], dtype=torch.int64)
        counts = torch.bincount(slot_task, minlength=len(tasks)).to(torch.float64)
        averaging = torch.zeros(len(tasks), len(slots), dtype=torch.float64)
        averaging[slot_task, torch.arange(len(slots))] = 1.0
        averaging /= counts[:, None]
        identity = len(tasks) == len(slots) and bool((slot_task == torch.arange(len(slots))).all())
        return cls(tuple(slots), tasks, slot_task, averaging, identity)


def encode_languages(languages: list[str]) -> Tensor:
    """Encodes language names as a ``len x MAX_LANGUAGE_BYTES`` uint8 tensor."""
    out = torch.zeros(len(languages), MAX_LANGUAGE_BYTES, dtype=torch.uint8)
    for i, language in enumerate(languages):
        raw = check_language_name(language).encode("utf-8")
        out[i, : len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    return out


def decode_languages(encoded: Tensor) -> list[str]:
    """Inverse of :func:`encode_languages`."""
    return [bytes(row[row != 0].tolist()).decode("utf-8") for row in encoded]


class Announcement:
    """Every rank's slot message, possibly still in flight; :meth:`wait` checks and reads it."""

    __slots__ = ("_gathered", "_work")

    def __init__(self, gathered: list[Tensor], work: dist.Work | None) -> None:
        self._gathered, self._work = gathered, work

    def wait(self) -> list[str]:
        """Every rank's language, once the ranks are known to agree on where they are.

        Raises:
            RuntimeError: if the ranks disagree on K, or on where they are in the step.
        """
        if self._work is not None:
            with peers():
                self._work.wait()
            self._work = None
        everything = torch.cat(self._gathered)
        headers = everything[:, :_HEADER].contiguous().view(torch.int64).tolist()
        per_rank = [k for k, *_ in headers]
        if len(set(per_rank)) != 1:
            raise RuntimeError(
                f"Ranks disagree on the number of slots (microbatches) per step: {per_rank}. "
                "Every rank must use the same slots_per_rank / accumulate_grad_batches."
            )
        positions = [tuple(position) for _, *position in headers]
        if len(set(positions)) != 1:
            where = ", ".join(
                f"rank {r}: step {t} slot {s} after {o} optimizer step(s)"
                for r, (t, s, o) in enumerate(positions)
            )
            raise RuntimeError(
                f"Ranks are out of step in the bucket-MOO hook ({where}). A rank stepped the "
                f"optimizer after fewer than {per_rank[0]} backward passes, or ran a different "
                "number of them (e.g. it caught an exception mid-step and went on). Every rank "
                f"must run exactly {per_rank[0]} backward passes per optimizer step; restart "
                "from the last checkpoint."
            )
        return decode_languages(everything[:, _HEADER:])


def announce_slot(
    language: str,
    *,
    slots_per_rank: int,
    step: int,
    slot: int,
    optimizer_steps: int,
    group: dist.ProcessGroup | None,
    world_size: int,
) -> Announcement:
    """Starts all-gathering the language of every rank's current slot, with where each rank
    stands; the returned announcement's ``wait()`` finishes it and checks the ranks agree.

    Called at the start of every backward pass, in one fixed-size message (slots per rank,
    the hook's step and slot, the optimizer steps taken, the language). Ranks configured with
    different K, or out of step because one of them stepped the optimizer after a partial
    step, meet in this collective and raise the same error together (in ``wait()``), before
    any gradient is combined with the wrong partner. Not waiting at once lets the backward
    pass go on while the message travels.
    """
    message = torch.zeros(1, SLOT_MESSAGE_BYTES, dtype=torch.uint8)
    header = torch.tensor([slots_per_rank, step, slot, optimizer_steps], dtype=torch.int64)
    message[0, :_HEADER] = header.view(torch.uint8)
    message[:, _HEADER:] = encode_languages([language])
    if world_size == 1:
        return Announcement([message], None)
    gathered = [torch.empty_like(message) for _ in range(world_size)]
    with peers():
        work = dist.all_gather(gathered, message, group=group, async_op=True)
    return Announcement(gathered, work)
