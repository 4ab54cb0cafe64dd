"""The package's words: what a language name may be, and how metric names are formed.

Kept free of torch and Lightning so that the report and the command line load it for free.
"""

from __future__ import annotations

import unicodedata

#: Language names travel as fixed-width UTF-8 between ranks (see ``comm.layout``).
MAX_LANGUAGE_BYTES = 64

#: Joins the two languages of a pair in metric names (``cos/de|en``). Language names may not
#: contain it, so a pair name always splits back into its two languages (BCP-47 tags such as
#: ``zh-Hans`` contain ``-``; POSIX locales such as ``en_US`` contain ``_``).
PAIR_SEPARATOR = "|"

# "/" would split a metric name into W&B sections; the separator would make pairs ambiguous.
_FORBIDDEN = ("/", PAIR_SEPARATOR)


def check_language_name(language: object) -> str:
    """Returns ``language`` if it is a valid language name, else raises.

    A language name is a non-empty ``str`` of at most 64 UTF-8 bytes, without ``/``, ``|``,
    control characters (NUL included) or surrounding whitespace.

    Raises:
        ValueError: naming the problem and the rule.
    """
    rule = (
        f"a language name must be a non-empty str of at most {MAX_LANGUAGE_BYTES} UTF-8 bytes "
        "without '/', '|', control characters or surrounding whitespace"
    )
    if not isinstance(language, str) or not language:
        raise ValueError(f"Invalid language name {language!r} ({type(language).__name__}): {rule}.")
    size = len(language.encode("utf-8"))
    if size > MAX_LANGUAGE_BYTES:
        raise ValueError(
            f"Language name {language[:20]!r}... is {size} UTF-8 bytes long: {rule}. Use a "
            "short tag such as 'en' or 'zh-Hans'."
        )
    bad = [c for c in language if c in _FORBIDDEN or unicodedata.category(c) == "Cc"]
    if bad or language != language.strip():
        raise ValueError(f"Invalid language name {language!r}: {rule}.")
    return language


def pair_name(a: str, b: str) -> str:
    """``"a|b"``: the metric suffix of a language pair (``cos/a|b``, ``affinity/a|b``)."""
    return f"{a}{PAIR_SEPARATOR}{b}"


def split_pair(name: str) -> tuple[str, str]:
    """Inverse of :func:`pair_name`.

    Raises:
        ValueError: if ``name`` is not a pair name.
    """
    a, sep, b = name.partition(PAIR_SEPARATOR)
    if not sep or not a or not b or PAIR_SEPARATOR in b:
        raise ValueError(f"{name!r} is not a language pair name 'a{PAIR_SEPARATOR}b'.")
    return a, b
