"""The example's tokenizer, always a Hugging Face one: trained here, or a local model's own.

:func:`train_tokenizer` trains a SentencePiece BPE model on the pretraining text (once per text
and options, cached on disk) and wraps it as a ``transformers`` fast tokenizer that encodes
exactly as SentencePiece does; :meth:`Tokenizer.from_pretrained` reads the tokenizer saved with
a local model. Either way :class:`Tokenizer` gives the data pipeline the ids it needs and is
saved next to the model (``save_pretrained``), loadable with ``AutoTokenizer``.
"""

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
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import SpmConverter, import_protobuf

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID", "Tokenizer", "train_tokenizer"]

# Fixed ids of the trained tokenizer: padding is 0 so that zero-padding collates
# (collate_with_language's default) without passing the id around.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_SPECIAL = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}

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
    """A Hugging Face tokenizer with the ids the example's data pipeline needs.

    Args:
        hf: the tokenizer. It needs an eos token (it ends every text); without a pad token, eos
            pads too, and without a bos token eos starts unpacked texts.
        fingerprint: a hash of it for cache keys (default: computed from its vocabulary).

    Raises:
        ValueError: if ``hf`` has no eos token.
    """

    def __init__(self, hf: PreTrainedTokenizerBase, fingerprint: str | None = None) -> None:
        if hf.eos_token_id is None:
            raise ValueError(
                f"The tokenizer {type(hf).__name__} has no eos token; the example ends every "
                "text with it. Set one (tokenizer.eos_token = ...) and save it with the model."
            )
        self.hf = hf
        self.eos_id: int = hf.eos_token_id
        self.pad_id: int = hf.pad_token_id if hf.pad_token_id is not None else self.eos_id
        self.bos_id: int = hf.bos_token_id if hf.bos_token_id is not None else self.eos_id
        self._fingerprint = fingerprint
        #: The SentencePiece model file (tokenizers from :func:`train_tokenizer` only).
        self.path: Path | None = None
        #: Whether :func:`train_tokenizer` found the SentencePiece model in its cache.
        self.from_cache = False

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """The tokenizer saved in a local model folder (never from the Hub).

        Raises:
            ValueError: if the folder has no tokenizer, or it has no eos token.
        """
        try:
            hf = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, TypeError) as err:
            reason = " ".join(str(err).split())  # one line: transformers' messages span several
            raise ValueError(f"{directory} holds no loadable tokenizer: {reason}") from None
        if isinstance(hf, bool) or not isinstance(hf, PreTrainedTokenizerBase):
            raise ValueError(f"{directory} holds no tokenizer (got {type(hf).__name__}).")
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        """Ids in use, added tokens included (the model's embedding needs at least this many)."""
        return len(self.hf)

    @property
    def fingerprint(self) -> str:
        """Hash of the tokenizer, for cache keys of anything trained on its ids."""
        if self._fingerprint is None:
            backend = getattr(self.hf, "backend_tokenizer", None)
            text = backend.to_str() if backend is not None else json.dumps(self.hf.get_vocab())
            self._fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._fingerprint

    def encode(self, texts: str | list[str]) -> list[int] | list[list[int]]:
        """Token ids of one text or of each of a list (no special tokens added)."""
        out = self.hf(texts, add_special_tokens=False, return_attention_mask=False)
        return out["input_ids"]

    def decode(self, ids: Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        """Text of one id sequence or of each of a list; special tokens (padding) are dropped."""
        if ids and not isinstance(ids[0], int):
            return [self.decode(x) for x in ids]  # type: ignore[misc]
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def save_pretrained(self, directory: str | Path) -> None:
        """Writes the tokenizer next to a model (``AutoTokenizer.from_pretrained`` reads it)."""
        self.hf.save_pretrained(directory)


def from_sentencepiece(model: bytes) -> PreTrainedTokenizerFast:
    """A fast Hugging Face tokenizer that encodes exactly as the SentencePiece ``model``.

    Built with ``transformers``' SentencePiece converter, which follows the model's normaliser
    (NFKC, whitespace) and ranks the BPE merges by piece score.
    """
    proto = import_protobuf().ModelProto()
    proto.ParseFromString(model)
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    # legacy=True prepends the dummy prefix to every text, as SentencePiece does, even when
    # normalisation removes the first character (a left-to-right mark in the Arabic Bible).
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab, legacy=True)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **_SPECIAL)


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
        The tokenizer (pad 0, unk 1, bos 2, eos 3); ``tokenizer.path`` is the cached model.

    Raises:
        ValueError: if there is no text, or SentencePiece cannot train on it.
    """
    sentences = _sample(texts, max_sentences_per_language)
    if not sentences:
        raise ValueError("No text to train the tokenizer on.")
    opts = {**DEFAULT_OPTIONS, **options}
    path = Path(cache_dir) / f"spm-{_digest(sentences, opts)}.model"
    from_cache = path.is_file()
    if not from_cache:
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
    data = path.read_bytes()
    tokenizer = Tokenizer(from_sentencepiece(data), hashlib.sha256(data).hexdigest()[:16])
    tokenizer.path, tokenizer.from_cache = path, from_cache
    return tokenizer


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
