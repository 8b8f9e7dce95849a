"""The README documents every option, and its differences table has a reason per row."""

from __future__ import annotations

import os
import re

from tapster.adjustments import PARAMS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_every_option_is_in_the_options_table() -> None:
    table = section(readme(), "Options")
    missing = [name for name, _ in PARAMS if f"`{name}`" not in table]
    assert missing == [], f"options missing from the README table: {missing}"


def test_every_difference_row_has_three_filled_columns() -> None:
    table = section(readme(), "Differences from Waitress")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Waitress")]
    assert len(rows) > 20
    for row in rows:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert len(cells) == 3 and all(cells), f"incomplete row: {row}"


def test_readme_shows_the_two_commands() -> None:
    text = readme()
    assert "make serve" in text and "make test" in text
