"""The snippet runner's parser: sessions, directives, line numbers, mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from .snippets import sessions

PAGE = """# Title

```python
a = 1
```

text

<details markdown="1"><summary>setup</summary>

<!-- snippet: torchrun -->
```python
b = 2
```

</details>

1. A list item:

   ```python
   c = a
   ```

```bash
echo not python
```

<!-- snippet: new -->
```python
d = 4
```
"""


def test_blocks_group_into_sessions_on_their_own_line_numbers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    found = sessions(page)
    assert [(s.launcher, s.first_line) for s in found] == [
        ("python", 3),
        ("torchrun", 12),
        ("python", 29),
    ]
    lines = PAGE.splitlines()
    for session in found:
        for number, code in enumerate(session.lines, 1):
            if code:
                assert lines[number - 1].strip() == code  # same line as in the page
    assert [ln for ln in found[1].lines if ln] == ["b = 2", "c = a"]  # dedented list item
    assert found[2].script().strip() == "d = 4"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- snippet: gpu -->\n```python\nx = 1\n```\n", "unknown snippet directive 'gpu'"),
        ("<!-- snippet: new -->\nsome prose\n```python\nx\n```\n", "must precede a python block"),
        ("<!-- snippet: new -->\n```bash\nls\n```\n", "must precede a python block"),
        ("```python\nx = 1\n", "never closed"),
    ],
)
def test_mistakes_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    page = tmp_path / "page.md"
    page.write_text(text)
    with pytest.raises(ValueError, match=message):
        sessions(page)
