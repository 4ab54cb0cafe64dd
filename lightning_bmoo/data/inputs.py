"""The sampler's inputs: a language per example, checked; a rank and world size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch.distributed as dist
from torch.utils.data import Dataset

from ..vocabulary import check_language_name
from .schedule import ProbabilitySpec


class WithLanguage(Dataset):
    """Adds the language under ``key`` to every (mapping) example of ``dataset``."""

    def __init__(self, dataset: Dataset, language: str, key: str) -> None:
        self.dataset, self.language, self.key = dataset, language, key

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.dataset[index]
        if not isinstance(example, Mapping):
            raise TypeError(
                f"language_key={self.key!r} needs mapping examples, but the {self.language!r} "
                f"dataset returns {type(example).__name__}. Drop language_key or return dicts."
            )
        return {**example, self.key: self.language}


def check_int(name: str, value: object, minimum: int | None) -> None:
    """Raises ``ValueError`` unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``(rank, world_size)``: the given ones, else torch.distributed's, else ``(0, 1)``."""
    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    check_int("world_size", world_size, 1)
    check_int("rank", rank, None)
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank={rank} is outside [0, world_size={world_size}). Pass both rank and "
            "world_size, or neither to read them from torch.distributed."
        )
    return rank, world_size


def group_indices(languages: Sequence[str] | Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    """Dataset indices per language, from a language per index or a ready mapping; checked:
    valid names, no negative or repeated index."""
    if isinstance(languages, Mapping):
        groups = {lang: [int(i) for i in idx] for lang, idx in languages.items()}
    else:
        if isinstance(languages, str):
            raise ValueError(
                "languages is a single string: pass one language name per dataset index."
            )
        groups = {}
        for i, lang in enumerate(languages):
            groups.setdefault(lang, []).append(i)
    if not groups:
        raise ValueError("The dataset is empty: languages lists no examples.")
    for lang in groups:
        check_language_name(lang)
    if len(groups) > 65535:
        raise ValueError(f"{len(groups)} languages: at most 65535 are supported.")
    seen: set[int] = set()
    for lang, idx in groups.items():
        if any(i < 0 for i in idx):
            raise ValueError(f"Language {lang!r} lists negative dataset indices.")
        if len(set(idx)) != len(idx) or not seen.isdisjoint(idx):
            raise ValueError(
                f"Dataset indices repeat within or across languages (first seen in {lang!r}): "
                "each example must belong to exactly one language."
            )
        seen.update(idx)
    return groups


def check_empty_languages(sizes: Mapping[str, int], spec: ProbabilitySpec) -> None:
    """Raises ``ValueError`` for a language without examples that would still be sampled."""
    explicit = isinstance(spec, Mapping)
    empty = sorted(
        lang for lang, n in sizes.items() if n == 0 and (not explicit or spec.get(lang, 0) != 0)
    )
    if empty:
        raise ValueError(
            f"Language(s) {empty} have no examples but would be sampled. Remove them, or give "
            "them probability 0 in a probabilities dict."
        )


def read_field(example: Any, column: str, index: int) -> str:
    """The ``column`` field of ``example`` (a mapping or an object), or a clear error."""
    if isinstance(example, Mapping):
        if column in example:
            return example[column]
    elif hasattr(example, column):
        return getattr(example, column)
    raise ValueError(
        f"Example {index} has no {column!r} field; pass column= naming its language field."
    )
