"""The benchmark's text: the three added Bible translations, book splits, low-resource cuts."""

from __future__ import annotations

import re

import pytest

from benchmarks.evidence.config import BOOKS, REGIMES
from benchmarks.evidence.corpus import regime_texts
from examples.multilingual import texts
from examples.multilingual.bible.make_extract import clean_verse

SCRIPTS = {
    "hi": "[\u0900-\u097f]",  # Devanagari
    "vi": "[ạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹđ]",
    "tl": r"\bng\b",
}


def test_added_translations_are_verse_aligned_and_in_their_script() -> None:
    en = texts.load_bible(["en"], books=BOOKS["test"])["en"]
    for lang, pattern in SCRIPTS.items():
        verses = texts.load_bible([lang], books=BOOKS["test"])[lang]
        assert abs(len(verses) - len(en)) <= 10, lang
        assert sum(bool(re.search(pattern, v)) for v in verses) > 0.5 * len(verses), lang
        assert not any(re.search(r"\d+\s*:\s*\d+|\*|\s\s", v) for v in verses), lang


def test_hindi_cross_references_are_removed_and_other_parentheses_kept() -> None:
    raw = "आदि में परमेश्वर ने आकाश और पृथ्वी की सृष्टि की। (इब्रा. 1:10, इब्रा. 11:3)"
    assert clean_verse(raw, "hi") == "आदि में परमेश्वर ने आकाश और पृथ्वी की सृष्टि की।"
    assert clean_verse("(जो यरूशलेम कहलाता है) और", "hi") == "(जो यरूशलेम कहलाता है) और"
    # Other editions are left as they were (the committed files must not change).
    assert clean_verse("(7:26) L'Éternel dit", "fr") == "(7:26) L'Éternel dit"


def test_load_bible_reads_the_books_asked_for() -> None:
    by_book = texts.load_bible(["de"], books=(65,))["de"]  # Jude: 25 verses
    assert len(by_book) == 25
    assert set(by_book) <= set(texts.load_bible(["de"], "validation")["de"])
    with pytest.raises(ValueError, match="book numbers in 1-66"):
        texts.load_bible(["de"], books=(0, 67))
    with pytest.raises(ValueError, match="book numbers in 1-66"):
        texts.load_bible(["de"], books=())


def test_splits_are_disjoint_and_low_resource_languages_are_cut() -> None:
    books = [set(b) for b in BOOKS.values()]
    assert sum(map(len, books)) == len(set.union(*books)) and min(set.union(*books)) == 40
    regime = REGIMES["imbalanced"]
    split = {s: regime_texts(regime, s) for s in ("pretrain", "train", "validation", "test")}
    for lang in regime.languages:
        seen = [set(split[s][lang]) for s in split]
        # Disjoint books; a few formulas recur word for word in several books.
        assert sum(map(len, seen)) - len(set.union(*seen)) < 5, lang
        n = len(split["train"][lang])
        assert n == 500 if lang in regime.low_resource else n > 5000, lang
    assert len(split["pretrain"]["hi"]) == regime.pretrain_verses
