"""How every command prints: rich tables on a terminal, plain aligned text when piped, JSON with
``--json``. ``NO_COLOR`` is respected (rich reads it). Database URLs are shown only redacted."""

from __future__ import annotations

import json
import sys
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["Column", "cell", "console", "is_terminal", "print_fields", "print_json",
           "print_line", "print_table", "to_json"]

#: ``(key, header)``: which value of a row goes in a column, and its title.
Column = tuple[str, str]

_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = Console(highlight=False)
    return _console


def is_terminal() -> bool:
    return console().is_terminal


def _default(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def to_json(value: Any, *, indent: int | None = 2) -> str:
    """``value`` as JSON; datetimes become ISO 8601 text."""
    return json.dumps(value, default=_default, indent=indent, ensure_ascii=False)


def print_json(value: Any) -> None:
    sys.stdout.write(to_json(value) + "\n")
    sys.stdout.flush()


def cell(value: Any) -> str:
    """A value as table text: ``-`` for nothing, UTC seconds for times, commas for lists."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(cell(item) for item in value) or "-"
    if isinstance(value, dict):
        return to_json(value, indent=None)
    return str(value)


def print_line(text: str, *, style: str | None = None, err: bool = False) -> None:
    """One line of text (styled only on a terminal; never interpreted as markup)."""
    if err:
        print(text, file=sys.stderr)
    elif style is not None and is_terminal():
        console().print(escape(text), style=style)
    else:
        print(text)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *,
                title: str | None = None, empty: str = "nothing to show") -> None:
    """Rows as a rich table on a terminal, else as plain columns separated by two spaces."""
    if not rows:
        print_line(f"{title}: {empty}" if title else empty)
        return
    texts = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    if is_terminal():
        table = Table(title=title, title_justify="left", title_style="bold")
        for _, header in columns:
            table.add_column(header, overflow="fold")
        for line in texts:
            table.add_row(*(escape(text) for text in line))
        console().print(table)
        return
    if title:
        print(title)
    headers = [header for _, header in columns]
    widths = [max(len(header), *(len(line[i]) for line in texts)) for i, header in enumerate(headers)]
    for line in [headers, *texts]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip())


def print_fields(fields: Sequence[tuple[str, Any]], *, title: str | None = None) -> None:
    """``label  value`` lines (a two-column grid on a terminal)."""
    if is_terminal():
        table = Table(title=title, title_justify="left", title_style="bold", show_header=False,
                      box=None, padding=(0, 2, 0, 0))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for label, value in fields:
            table.add_row(escape(label), escape(cell(value)))
        console().print(table)
        return
    if title:
        print(title)
    width = max((len(label) for label, _ in fields), default=0)
    for label, value in fields:
        print(f"{label.ljust(width)}  {cell(value)}")
