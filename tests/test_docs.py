"""The README's options table is the one the option records render, and its
differences table has a reason per row.

`python tests/test_docs.py` rewrites the README's options table from the records.
"""

from __future__ import annotations

import os
import re

from tapster.options import OPTIONS, Option

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


TABLE_HEAD = "| Option | Command line | Default | Meaning |\n|---|---|---|---|\n"


def command_line(option: Option) -> str:
    if not option.command_line:
        return "Python only"
    return ", ".join(f"`{flag}`" for flag in option.flags)


def options_table() -> str:
    """The README's options table, one row per record, in the records' order."""
    rows = []
    for option in OPTIONS:
        cells = [f"`{option.name}`", command_line(option), option.shown_default, option.help]
        rows.append("| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |\n")
    return TABLE_HEAD + "".join(rows)


def readme_options_table(text: str) -> str:
    """The table of the README's Options section, as it stands."""
    options = section(text, "Options")
    start = options.index(TABLE_HEAD.splitlines()[0])
    end = options.find("\n\n", start)
    return options[start : end + 1 if end != -1 else len(options)]


def test_the_options_table_is_rendered_from_the_records() -> None:
    assert readme_options_table(readme()) == options_table(), (
        "README.md's options table and the records in tapster/options.py disagree: "
        "run `python tests/test_docs.py` to rewrite the table"
    )


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


if __name__ == "__main__":
    text = readme()
    updated = text.replace(readme_options_table(text), options_table(), 1)
    with open(os.path.join(ROOT, "README.md"), "w", encoding="utf-8") as f:
        f.write(updated)
