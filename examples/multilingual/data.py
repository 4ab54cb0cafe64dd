"""One language's text as fixed-length token sequences, batched language-homogeneously.

:class:`LMSequenceDataset` turns one language's text (from :mod:`.texts`) into fixed-length
token sequences; :func:`build_train_loader` and :func:`build_val_loader` batch them
language-homogeneously.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from lightning_bmoo.data import LanguageBatchSampler, ProbabilitySpec, collate_with_language

__all__ = [
    "LMSequenceDataset",
    "build_datasets",
    "build_train_loader",
    "build_val_loader",
]


class TextEncoder(Protocol):
    """What :class:`LMSequenceDataset` needs from a tokenizer."""

    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, texts: list[str]) -> list[list[int]]: ...


class LMSequenceDataset(Dataset):
    """One language's text as fixed-length token sequences for causal language modelling.

    With ``pack=True`` every example becomes ``ids + [eos]``, the examples are concatenated and
    the stream is cut into ``seq_len`` windows (no padding but in the last window). With
    ``pack=False`` each example is its own sequence, ``[bos] + ids + [eos]`` truncated to
    ``seq_len`` and right-padded with ``pad_id``.

    Items are ``{"input_ids": LongTensor[seq_len], "language": language}``.
    """

    def __init__(
        self,
        texts: Sequence[str],
        tokenizer: TextEncoder,
        seq_len: int,
        language: str,
        *,
        pack: bool = True,
    ) -> None:
        if seq_len < 2:
            raise ValueError(f"seq_len must be >= 2 (an input and a target), got {seq_len}.")
        if not texts:
            raise ValueError(f"No text for language {language!r}.")
        self.language = language
        self.seq_len = seq_len
        self.pad_id = tokenizer.pad_id
        ids = tokenizer.encode(list(texts))
        if pack:
            rows = _pack(ids, seq_len, tokenizer.eos_id, tokenizer.pad_id)
        else:
            rows = [[*[tokenizer.bos_id, *x][: seq_len - 1], tokenizer.eos_id] for x in ids]
            rows = [r + [tokenizer.pad_id] * (seq_len - len(r)) for r in rows]
        # int32 halves the memory of the larger splits; items are widened on access.
        self.sequences = torch.tensor(rows, dtype=torch.int32).reshape(-1, seq_len)

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_ids": self.sequences[index].long(), "language": self.language}

    @property
    def num_tokens(self) -> int:
        """Tokens in the dataset, padding excluded."""
        return int((self.sequences != self.pad_id).sum())


def _pack(ids: list[list[int]], seq_len: int, eos: int, pad: int) -> list[list[int]]:
    stream = [t for x in ids for t in (*x, eos)]
    rows = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    if len(rows) > 1 and len(rows[-1]) < 2:
        rows.pop()  # a lone token has no target
    rows[-1] = rows[-1] + [pad] * (seq_len - len(rows[-1]))
    return rows


def build_datasets(
    texts: Mapping[str, Sequence[str]],
    tokenizer: TextEncoder,
    seq_len: int,
    *,
    pack: bool = True,
) -> dict[str, LMSequenceDataset]:
    """One :class:`LMSequenceDataset` per language."""
    return {
        lang: LMSequenceDataset(items, tokenizer, seq_len, lang, pack=pack)
        for lang, items in texts.items()
    }


def build_train_loader(
    datasets: Mapping[str, Dataset],
    batch_size: int,
    *,
    slots_per_rank: int = 1,
    rank: int | None = None,
    world_size: int | None = None,
    probabilities: ProbabilitySpec = "proportional",
    seed: int = 0,
    steps_per_epoch: int | None = None,
    drop_last: bool = True,
    coverage: bool = True,
    num_workers: int = 0,
    pad_id: int = 0,
) -> DataLoader:
    """Language-homogeneous training batches scheduled over ranks and accumulation slots.

    Use with ``Trainer(accumulate_grad_batches=slots_per_rank, use_distributed_sampler=False)``.
    ``rank``/``world_size`` default to ``torch.distributed``'s, so build it after the process
    group exists (in a ``train_dataloader()`` hook) or pass them. ``loader.batch_sampler`` is the
    :class:`~lightning_bmoo.data.LanguageBatchSampler` (its ``step_slots`` tells which
    language each slot holds).
    """
    sampler, dataset = LanguageBatchSampler.from_datasets(
        datasets,
        batch_size,
        language_key="language",
        probabilities=probabilities,
        slots_per_rank=slots_per_rank,
        seed=seed,
        drop_last=drop_last,
        coverage=coverage,
        steps_per_epoch=steps_per_epoch,
        rank=rank,
        world_size=world_size,
    )
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        collate_fn=_Collate(pad_id),
    )


def build_val_loader(
    datasets: Mapping[str, Dataset],
    batch_size: int,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    pad_id: int = 0,
) -> DataLoader:
    """Language-homogeneous validation batches, each language's batches dealt over the ranks.

    Every rank gets at least one batch of every language (a language with fewer batches than
    ranks repeats some), so that metrics synchronised per language see the same keys on every
    rank; otherwise each batch is evaluated once.
    """
    rank, world_size = _rank_and_world(rank, world_size)
    batches: list[list[int]] = []
    offset = 0
    parts = []
    for lang in sorted(datasets):
        n = len(datasets[lang])  # type: ignore[arg-type]
        if n == 0:
            raise ValueError(f"The validation set of {lang!r} is empty.")
        lang_batches = [
            list(range(offset + i, offset + min(i + batch_size, n)))
            for i in range(0, n, batch_size)
        ]
        mine = lang_batches[rank::world_size] or [lang_batches[rank % len(lang_batches)]]
        batches.extend(mine)
        parts.append(datasets[lang])
        offset += n
    return DataLoader(ConcatDataset(parts), batch_sampler=batches, collate_fn=_Collate(pad_id))


class _Collate:
    """Picklable ``collate_with_language`` with the tokenizer's pad id (for worker processes)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate_with_language(batch, padding_value={"input_ids": self.pad_id})


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialised else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialised else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside [0, world_size={world_size}).")
    return rank, world_size
