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
    classes: Counter = field(default_factory=Counter)  # every class name on any element
    # Chart titles as drawn (<text class="title">), and the page's notes on skipped metrics.
    titles: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    # Per <svg>: its aria-label and every <text> in it as (class, text-anchor, text).
    svg_texts: list[tuple[str, list[tuple[str, str, str]]]] = field(default_factory=list)

    def y_ticks(self) -> list[list[str]]:
        """The y tick labels of every line chart (ticks drawn right-aligned left of the axis)."""
        return [
            [t for cls, anchor, t in texts if cls.split()[0] == "tick" and anchor == "end"]
            for _, texts in self.svg_texts
        ]

    def cell_values(self, label_prefix: str) -> list[list[str]]:
        """The values written in the cells of every heatmap whose label starts so."""
        return [
            [t for cls, _, t in texts if cls == "val"]
            for label, texts in self.svg_texts
            if label.startswith(label_prefix)
        ]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, SectionInfo] = {}
        self.current: SectionInfo | None = None
        self.capture: str | None = None
        self.buffer: list[str] = []
        self.svg_text: tuple[str, str] | None = None
        self.svg_buffer: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "section":
            self.current = self.sections.setdefault(a.get("id", ""), SectionInfo())
        if self.current is None:
            return
        self.current.tags[tag] += 1
        self.current.classes.update((a.get("class") or "").split())
        if tag == "svg":
            self.current.svgs += 1
            self.current.svg_texts.append((a.get("aria-label") or "", []))
        elif tag == "img":
            self.current.imgs += 1
        elif tag == "text":
            self.svg_text, self.svg_buffer = (a.get("class") or "", a.get("text-anchor") or ""), []
        if tag == "text" and a.get("class") == "title":
            self.capture, self.buffer = "title", []
        elif tag == "p" and a.get("class") == "note":
            self.capture, self.buffer = "note", []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.current = None
        elif tag == "text" and self.svg_text and self.current and self.current.svg_texts:
            cls, anchor = self.svg_text
            self.current.svg_texts[-1][1].append((cls, anchor, "".join(self.svg_buffer)))
            self.svg_text = None
        if self.capture and tag in ("text", "p") and self.current is not None:
            target = self.current.titles if self.capture == "title" else self.current.notes
            target.append("".join(self.buffer).strip())
            self.capture = None

    def handle_data(self, data: str) -> None:
        if self.capture:
            self.buffer.append(data)
        if self.svg_text:
            self.svg_buffer.append(data)
        if self.current is not None:
            self.current.text.append(data)


def sections(page: str) -> dict[str, SectionInfo]:
    p = _Parser()
    p.feed(page)
    return p.sections
