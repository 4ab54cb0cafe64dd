"""One vocabulary: names round-trip, writers use it, and the docs' tables say what it says."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from lightning_bmoo import vocabulary as vocab
from lightning_bmoo.report.families import SECTIONS, Matrix, PerLanguage, Scalar

DOCS = Path(__file__).resolve().parents[2] / "docs"


def markdown_tables(path: Path) -> list[list[list[str]]]:
    """Every table of a markdown file, as rows of cells (the separator row dropped)."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def plain(cell: str) -> str:
    """A cell's text as rendered: code marks and tags dropped, entities decoded."""
    return html.unescape(re.sub(r"</?code>|`", "", cell)).replace("\\|", "|").strip()


def names_in(cell: str) -> list[str]:
    return [plain(c) for c in re.findall(r"`[^`]+`|<code>.*?</code>", cell)]


def table_with_header(path: Path, *header: str) -> list[list[str]]:
    return next(t[1:] for t in markdown_tables(path) if tuple(t[0][: len(header)]) == header)


@pytest.mark.parametrize(
    ("doc", "header", "metrics"),
    [
        ("monitor.md", ("name", "meaning"), vocab.MONITOR_METRICS),
        ("monitor.md", ("name", "kind", "meaning"), vocab.WANDB_PANELS),
    ],
)
def test_docs_metric_tables_say_what_the_vocabulary_says(doc, header, metrics) -> None:
    rows = table_with_header(DOCS / doc, *header)
    documented = {plain(row[0]): plain(row[header.index("meaning")]) for row in rows}
    assert list(documented) == [m.pattern for m in metrics]  # every metric, in order
    for m in metrics:
        assert documented[m.pattern] == m.meaning, m.pattern
    if "kind" in header:
        assert [plain(row[1]) for row in rows] == [m.kind for m in metrics]


def test_report_docs_list_what_each_section_draws() -> None:
    rows = {plain(row[0]): row for row in table_with_header(DOCS / "report.md", "section")}
    for section in SECTIONS:
        drawn = set()
        for item in section.items:
            alternatives = item.alternatives if isinstance(item, PerLanguage) else (item.logged,)
            drawn.update(logged.metric.pattern for logged in alternatives)
        assert section.title in rows, section.title
        assert set(names_in(rows[section.title][2])) == drawn, section.title
    groups = rows["Most conflicting groups"]
    assert names_in(groups[2]) == [vocab.CONFLICTS.pattern]
    every = {n for row in rows.values() for n in names_in(row[2])}
    assert {m.pattern for m in vocab.MONITOR_METRICS} <= every


def test_no_doc_describes_update_ratio_as_a_parameter_ratio() -> None:
    for doc in ("report.md", "monitor.md"):
        text = (DOCS / doc).read_text(encoding="utf-8")
        assert "Δθ" not in text and "|θ|" not in text, doc


def test_sections_draw_each_vocabulary_family_with_its_kind() -> None:
    for section in SECTIONS:
        for item in section.items:
            if isinstance(item, Scalar):
                assert item.logged.metric.kind == "scalar"
            elif isinstance(item, PerLanguage):
                assert {x.metric.kind for x in item.alternatives} == {"language"}
            else:
                assert isinstance(item, Matrix)
                assert item.logged.metric.kind in ("pair", "directed pair")


@pytest.mark.parametrize(
    "languages", [("de", "en"), ("zh-Hans", "en_US"), ("pt-BR", "ru"), ("ελ", "日本語")]
)
def test_pair_names_round_trip(languages: tuple[str, str]) -> None:
    for metric in (vocab.COS, vocab.AFFINITY, vocab.AFFINITY_EXACT):
        name = metric.key(*languages)
        assert name == f"{metric.family}/{languages[0]}|{languages[1]}"
        assert metric.languages_of(name) == languages
    assert vocab.LOSS.languages_of(vocab.LOSS.key("zh-Hans")) == ("zh-Hans",)
    assert vocab.COS_MIN.languages_of("cos_min") == ()


def test_names_that_are_not_of_the_family() -> None:
    assert vocab.COS.languages_of("cos/de-en") is None  # the old separator
    assert vocab.COS.languages_of("cos_min") is None
    assert vocab.LOSS.languages_of("loss/de|en") is None
    assert vocab.COS.languages_of("cos/a|b|c") is None
    with pytest.raises(ValueError, match="takes 2 language"):
        vocab.COS.key("de")
    assert vocab.COS.glob == "cos/*" and vocab.COS_MIN.glob == "cos_min"
