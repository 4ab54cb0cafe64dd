"""The step's slot -> language layout, exchanged between ranks, and its task structure."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

# Language names travel as fixed-width UTF-8 so that one all-gather carries the layout.
MAX_LANGUAGE_BYTES = 64


@dataclass(frozen=True)
class Layout:
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
    def from_slots(cls, slots: list[str] | tuple[str, ...]) -> Layout:
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
        raw = language.encode("utf-8")
        if not raw or len(raw) > MAX_LANGUAGE_BYTES:
            raise ValueError(
                f"Language names must be 1 to {MAX_LANGUAGE_BYTES} UTF-8 bytes, got {language!r}."
            )
        out[i, : len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    return out


def decode_languages(encoded: Tensor) -> list[str]:
    """Inverse of :func:`encode_languages`."""
    return [bytes(row[row != 0].tolist()).decode("utf-8") for row in encoded]


def exchange_slot(
    language: str, slots_per_rank: int, group: dist.ProcessGroup | None, world_size: int
) -> list[str]:
    """All-gathers the language of every rank's current slot; raises if ranks disagree on K.

    Called at the start of every backward pass, in one fixed-size message, so that ranks
    configured with different K meet in the same collective and fail together in the first
    backward, before DDP's own collectives could pair up with the wrong partner and hang.
    """
    if world_size == 1:
        return [language]
    message = torch.zeros(1, 8 + MAX_LANGUAGE_BYTES, dtype=torch.uint8)
    message[0, :8] = torch.tensor([slots_per_rank], dtype=torch.int64).view(torch.uint8)
    message[:, 8:] = encode_languages([language])
    gathered = [torch.empty_like(message) for _ in range(world_size)]
    dist.all_gather(gathered, message, group=group)
    everything = torch.cat(gathered)
    per_rank = everything[:, :8].contiguous().view(torch.int64).flatten().tolist()
    if len(set(per_rank)) != 1:
        raise RuntimeError(
            f"Ranks disagree on the number of slots (microbatches) per step: {per_rank}. "
            "Every rank must use the same slots_per_rank / accumulate_grad_batches."
        )
    return decode_languages(everything[:, 8:])
