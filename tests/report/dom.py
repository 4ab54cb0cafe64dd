"""Counts what a report page holds, per ``<section id=...>``, with the stdlib HTML parser."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class SectionInfo:
    svgs: int = 0
    imgs: int = 0
    tags: Counter = field(default_factory=Counter)
    # Chart titles as drawn (<text class="title">), and the page's notes on skipped metrics.
    titles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, SectionInfo] = {}
        self.current: SectionInfo | None = None
        self.capture: str | None = None
        self.buffer: list[str] = []
        self.hidden_depth = 0
        self.stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "section":
            self.current = self.sections.setdefault(a.get("id", ""), SectionInfo())
        if self.current is None:
            return
        self.current.tags[tag] += 1
        if tag == "svg":
            self.current.svgs += 1
        elif tag == "img":
            self.current.imgs += 1
        if tag == "text" and a.get("class") == "title":
            self.capture, self.buffer = "title", []
        elif tag == "p" and a.get("class") == "note":
            self.capture, self.buffer = "note", []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.current = None
        elif self.capture and tag in ("text", "p") and self.current is not None:
            target = self.current.titles if self.capture == "title" else self.current.notes
            target.append("".join(self.buffer).strip())
            self.capture = None

    def handle_data(self, data: str) -> None:
        if self.capture:
            self.buffer.append(data)
        if self.current is not None:
            self.current.text.append(data)


def sections(page: str) -> dict[str, SectionInfo]:
    p = _Parser()
    p.feed(page)
    return p.sections
