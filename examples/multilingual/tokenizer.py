"""A SentencePiece BPE tokenizer shared by all languages, trained once and cached on disk."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "Tokenizer", "train_tokenizer"]

# Fixed ids: padding is 0 so that zero-padding collates (collate_with_language's default) and
# the loss's ignore_index agree without passing the id around.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

DEFAULT_OPTIONS: dict[str, Any] = {
    "model_type": "bpe",
    "vocab_size": 4096,
    # Latin, Cyrillic, Arabic and Persian letters together are a few hundred symbols; 0.9999
    # keeps all of them and leaves out only stray symbols, which byte fallback still encodes.
    "character_coverage": 0.9999,
    "byte_fallback": True,
    "split_digits": True,
    "max_sentence_length": 8192,
    # Small corpora (your own folder) may not support the full vocabulary: take what they do
    # instead of failing. Read the size from Tokenizer.vocab_size, never from the option.
    "hard_vocab_limit": False,
}


class Tokenizer:
    """A loaded SentencePiece model with the example's fixed special ids."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, model: bytes | str | Path) -> None:
        self.model_bytes = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.path = None if isinstance(model, bytes) else Path(model)
        #: Whether :func:`train_tokenizer` found this model in its cache.
        self.from_cache = False
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_bytes)
        if (self.sp.pad_id(), self.sp.eos_id()) != (PAD_ID, EOS_ID):
            raise ValueError(
                f"The SentencePiece model has pad id {self.sp.pad_id()} and eos id "
                f"{self.sp.eos_id()}, but this example expects {PAD_ID} and {EOS_ID}: train it "
                "with train_tokenizer()."
            )

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def fingerprint(self) -> str:
        """Hash of the model, for cache keys of anything trained on its ids."""
        return hashlib.sha256(self.model_bytes).hexdigest()[:16]

    def encode(self, texts: str | list[str]) -> list[int] | list[list[int]]:
        """Token ids of one text or of each of a list (no special tokens added)."""
        return self.sp.encode(texts)

    def decode(self, ids: Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        """Text of one id sequence or of each of a list; padding is dropped."""
        if ids and not isinstance(ids[0], int):
            return [self.decode(x) for x in ids]  # type: ignore[misc]
        return self.sp.decode([int(i) for i in ids if int(i) != PAD_ID])


def train_tokenizer(
    texts: Mapping[str, Sequence[str]] | Iterable[str],
    cache_dir: str | Path,
    *,
    max_sentences_per_language: int | None = 20_000,
    **options: Any,
) -> Tokenizer:
    """Trains a BPE model on ``texts`` or loads the one trained before on the same input.

    Args:
        texts: ``{language: [text, ...]}`` or a flat iterable of texts.
        cache_dir: where models are kept, as ``spm-<hash>.model``; the hash covers the
            training sentences and the options, so changing either trains a new model.
        max_sentences_per_language: take at most this many texts per language, spread evenly,
            so that each language gets a similar say in the vocabulary whatever its size
            (and training stays around a second). ``None`` takes everything.
        **options: SentencePiece trainer options overriding :data:`DEFAULT_OPTIONS`
            (e.g. ``vocab_size``).

    Returns:
        The tokenizer; ``tokenizer.path`` is the cached model file.
    """
    sentences = _sample(texts, max_sentences_per_language)
    if not sentences:
        raise ValueError("No text to train the tokenizer on.")
    opts = {**DEFAULT_OPTIONS, **options}
    path = Path(cache_dir) / f"spm-{_digest(sentences, opts)}.model"
    if path.is_file():
        tokenizer = Tokenizer(path)
        tokenizer.from_cache = True
        return tokenizer
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=min(4, os.cpu_count() or 1),
            minloglevel=2,
            **opts,
        )
    except RuntimeError as err:
        raise ValueError(
            f"SentencePiece could not train on {len(sentences)} texts with {opts}: {err}"
        ) from err
    _write_atomic(path, model.getvalue())
    return Tokenizer(path)


def _sample(texts: Mapping[str, Sequence[str]] | Iterable[str], limit: int | None) -> list[str]:
    groups = list(texts.values()) if isinstance(texts, Mapping) else [list(texts)]
    out = []
    for group in groups:
        group = [t for t in group if t.strip()]
        if limit is not None and len(group) > limit:
            group = [group[i * len(group) // limit] for i in range(limit)]
        out.extend(group)
    return out


def _digest(sentences: list[str], options: Mapping[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    h.update(spm.__version__.encode())
    for s in sentences:
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _write_atomic(path: Path, data: bytes) -> None:
    # Two processes (e.g. two DDP ranks) may train the same model at once: neither may read
    # the other's half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
