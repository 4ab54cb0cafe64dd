"""Finding the language of a training batch, before its backward pass reaches the hook."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

#: Signature of a ``language_fn``: the batch in, its language out.
LanguageFn = Callable[[Any], str]


def batch_language(batch: Any, key: str = "language") -> str:
    """Returns the single language of a batch read from ``batch[key]``.

    ``batch[key]`` may be a string (what :func:`~lightning_bmoo.collate_with_language` gives)
    or a sequence of identical strings (what ``default_collate`` makes of a per-example field).

    Args:
        batch: the batch the training step receives.
        key: the field holding the language.

    Raises:
        ValueError: if the batch has no such field, the field is not a string or sequence of
            strings, or the batch mixes languages.
    """
    fix = (
        "Collate with lightning_bmoo.collate_with_language (batch_sampler=LanguageBatchSampler), "
        "or pass BucketMOOStrategy(language_fn=...) returning the batch's language."
    )
    if not isinstance(batch, Mapping) or key not in batch:
        raise ValueError(
            f"Cannot find the language of a {type(batch).__name__} batch: the bucket-MOO "
            f"strategy reads it from batch[{key!r}], which is missing. {fix}"
        )
    value = batch[key]
    if isinstance(value, str):
        languages = {value}
    elif isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        languages = set(value)
    else:
        raise ValueError(
            f"batch[{key!r}] is {type(value).__name__} {_short(value)}; expected a language "
            f"name or a sequence of identical names. {fix}"
        )
    if len(languages) != 1:
        raise ValueError(
            f"The batch mixes languages {sorted(languages)}; every microbatch must hold one "
            "language, since its gradient is that language's row in the MOO solve. Use "
            "DataLoader(dataset, batch_sampler=LanguageBatchSampler(...)) and "
            "Trainer(use_distributed_sampler=False)."
        )
    (language,) = languages
    if not language:
        raise ValueError(f"batch[{key!r}] is an empty string; name the batch's language.")
    return language


def checked_language(language: Any, source: str) -> str:
    """Validates what a ``language_fn`` returned."""
    if not isinstance(language, str) or not language:
        raise ValueError(
            f"{source} returned {_short(language)} ({type(language).__name__}); it must return "
            "the batch's language as a non-empty str."
        )
    return language


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
