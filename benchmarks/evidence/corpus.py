"""The regimes' text: Bible verses per split, a shared SentencePiece tokenizer, token sequences.

Text comes from the example's committed Bible extract (``examples/multilingual/bible``); the
packing into fixed-length sequences is the example's :class:`LMSequenceDataset`. The
tokenizer is a few lines of SentencePiece of its own, so that the benchmark does not move when
the example changes its model or tokenizer.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import sentencepiece as spm
import torch

from examples.multilingual.data import LMSequenceDataset
from examples.multilingual.texts import BIBLE_SPLITS, load_bible

from .config import BOOKS, Regime

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def regime_texts(regime: Regime, split: str) -> dict[str, list[str]]:
    """Verses per language of ``split``: ``"pretrain"`` (Old Testament), ``"train"``,
    ``"validation"`` or ``"test"`` (disjoint New Testament books, see :data:`BOOKS`).

    Low-resource languages keep ``regime.low_verses`` training verses, spread over the books.
    """
    if split == "pretrain":
        books = BIBLE_SPLITS["pretrain"]
        return load_bible(regime.languages, books=books, max_verses=regime.pretrain_verses)
    texts = load_bible(regime.languages, books=BOOKS[split])
    if split == "train":
        for lang in regime.low_resource:
            verses = texts[lang]
            n = regime.low_verses
            texts[lang] = [verses[i * len(verses) // n] for i in range(min(n, len(verses)))]
    return texts


class Tokenizer:
    """A SentencePiece BPE model with fixed special ids (pad 0, unk 1, bos 2, eos 3)."""

    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def __init__(self, model: bytes) -> None:
        self.model_bytes = model
        self.sp = spm.SentencePieceProcessor(model_proto=model)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)


def train_tokenizer(texts: Mapping[str, Sequence[str]], vocab_size: int) -> Tokenizer:
    """BPE over every language's text together (deterministic for the same input)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t for verses in texts.values() for t in verses]),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9999,
        byte_fallback=True,
        split_digits=True,
        hard_vocab_limit=False,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        num_threads=1,
        minloglevel=2,
    )
    return Tokenizer(model.getvalue())


def sequences(
    texts: Mapping[str, Sequence[str]], tokenizer: Tokenizer, seq_len: int
) -> dict[str, LMSequenceDataset]:
    """Each language's verses packed into ``seq_len``-token sequences."""
    return {
        lang: LMSequenceDataset(verses, tokenizer, seq_len, lang, pack=True)
        for lang, verses in texts.items()
    }


def eval_batches(
    datasets: Mapping[str, LMSequenceDataset], count: int, batch_size: int
) -> dict[str, list[torch.Tensor]]:
    """``count`` sequences per language, spread evenly over the split, in batches."""
    out = {}
    for lang, ds in datasets.items():
        n = len(ds)
        rows = ds.sequences[[i * n // count for i in range(min(count, n))]].long()
        out[lang] = list(rows.split(batch_size))
    return out
