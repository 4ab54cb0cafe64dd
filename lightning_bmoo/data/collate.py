"""Collation of language-homogeneous batches of dict examples."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate


def collate_with_language(
    batch: Sequence[Mapping[str, Any]],
    *,
    language_key: str = "language",
    padding_value: float | Mapping[str, float] = 0,
) -> dict[str, Any]:
    """Collates dict examples like ``default_collate``, keeping the language as one string.

    Tensor fields whose shapes differ across the batch (e.g. token ids of different lengths)
    are right-padded to the largest shape instead of failing to stack. Use
    ``functools.partial`` to change the keyword arguments for a ``DataLoader``.

    Args:
        batch: examples, each a mapping holding ``language_key``.
        language_key: the field holding the language name.
        padding_value: pad value for every field, or a mapping of field to pad value
            (fields missing from it pad with 0).

    Returns:
        The collated fields, with ``batch[language_key]`` a single ``str``.

    Raises:
        ValueError: if the batch is empty, an example is not a mapping or lacks the language
            field, or the batch mixes languages.
    """
    if len(batch) == 0:
        raise ValueError("Cannot collate an empty batch.")
    for i, example in enumerate(batch):
        if not isinstance(example, Mapping) or language_key not in example:
            raise ValueError(
                f"Example {i} of the batch is {type(example).__name__} without a "
                f"{language_key!r} field; collate_with_language needs dict examples with their "
                "language (LanguageBatchSampler.from_datasets(..., language_key=...) adds it)."
            )
    languages = sorted({example[language_key] for example in batch})
    if len(languages) != 1:
        raise ValueError(
            f"The batch mixes languages {languages}; batches must be language-homogeneous. "
            "Use DataLoader(dataset, batch_sampler=LanguageBatchSampler(...)) and, under "
            "Lightning, Trainer(use_distributed_sampler=False)."
        )
    out: dict[str, Any] = {}
    for key in batch[0]:
        if key == language_key:
            continue
        values = [example[key] for example in batch]
        pad = padding_value.get(key, 0) if isinstance(padding_value, Mapping) else padding_value
        out[key] = _pad_stack(values, pad) if _ragged_tensors(values) else default_collate(values)
    out[language_key] = languages[0]
    return out


def _ragged_tensors(values: list[Any]) -> bool:
    if not all(isinstance(v, torch.Tensor) for v in values):
        return False
    return len({v.dim() for v in values}) == 1 and len({v.shape for v in values}) > 1


def _pad_stack(values: list[torch.Tensor], pad: float) -> torch.Tensor:
    shape = [max(sizes) for sizes in zip(*(v.shape for v in values), strict=True)]
    out = values[0].new_full((len(values), *shape), pad)
    for i, v in enumerate(values):
        out[(i, *(slice(0, n) for n in v.shape))] = v
    return out
