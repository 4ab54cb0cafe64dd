"""Finds the Python code blocks of a Markdown file and groups them into runnable sessions.

See tests/docs/test_snippets.py for the convention the documentation follows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

#: ``<!-- snippet: KIND -->`` on the line before a block's opening fence starts a new session.
DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(?P<kind>[\w-]+)\s*-->\s*$")
LAUNCHERS = ("python", "torchrun")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")


@dataclass
class Session:
    """Blocks run as one script; ``lines[i]`` is the code on Markdown line ``i + 1`` (or '')."""

    launcher: str
    first_line: int
    lines: list[str] = field(default_factory=list)

    def script(self) -> str:
        """The script, each block on the Markdown file's own line numbers."""
        return "\n".join(self.lines) + "\n"


def sessions(path: Path) -> list[Session]:
    """The ``python`` blocks of ``path``, grouped into sessions by the directives.

    Raises:
        ValueError: for an unknown directive, a directive not followed by a python block, or an
            unclosed fence.
    """
    text = path.read_text(encoding="utf-8").splitlines()
    out: list[Session] = []
    pending: str | None = None  # a directive waiting for its block
    i = 0
    while i < len(text):
        line = text[i]
        directive = DIRECTIVE.match(line)
        if directive:
            kind = directive["kind"]
            if kind == "new":
                kind = "python"
            if kind not in LAUNCHERS:
                raise ValueError(
                    f"{path}:{i + 1}: unknown snippet directive {kind!r}; use 'new' or "
                    f"'torchrun' (see tests/docs/test_snippets.py)."
                )
            pending = kind
            i += 1
            continue
        fence = _FENCE.match(line)
        if not fence:
            if line.strip() and pending is not None:
                raise ValueError(
                    f"{path}:{i + 1}: a snippet directive must precede a python block."
                )
            i += 1
            continue
        end = _closing(text, i, fence["fence"], path)
        if fence["info"] in ("python", "py"):
            if pending is not None or not out:
                out.append(Session(pending or "python", i + 1))
            session = out[-1]
            body = _dedent(text[i + 1 : end], fence["indent"])
            session.lines.extend([""] * (i + 1 - len(session.lines)))
            session.lines.extend(body)
        elif pending is not None:
            raise ValueError(f"{path}:{i + 1}: a snippet directive must precede a python block.")
        pending = None
        i = end + 1
    return out


def _closing(text: list[str], start: int, fence: str, path: Path) -> int:
    for j in range(start + 1, len(text)):
        if text[j].strip().startswith(fence[0] * len(fence)) and not text[j].strip().strip(
            fence[0]
        ):
            return j
    raise ValueError(f"{path}:{start + 1}: the code block is never closed.")


def _dedent(lines: list[str], indent: str) -> list[str]:
    # A block inside a list item is indented like its fence; the code itself starts at column 0.
    return [ln[len(indent) :] if ln.startswith(indent) else ln.lstrip() for ln in lines]
