"""What a command prints: one JSON document with --json, else text for people
(tables with a header row, columns padded to their widest cell)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from .errors import EXIT_OK

__all__ = ["Output", "cell", "table", "took"]


class Output(msgspec.Struct, frozen=True):
    """A command's result: `document` for --json (the same shape the HTTP API
    answers with, where there is a route), `text` for people; `code` the exit
    code (1 for a result that is printed but is a finding, e.g. a failed check)."""

    document: Any
    text: str
    code: int = EXIT_OK

    def render(self, as_json: bool) -> str:
        if as_json:
            return msgspec.json.format(msgspec.json.encode(self.document).decode(), indent=2)
        return self.text


def cell(value: Any, width: int = 60) -> str:
    """A value as one short line: times to the second, None as "-", long text cut."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def took(start: datetime | None, end: datetime | None) -> str:
    """The time from `start` to `end` ("1.25s"), or "-" if either is missing."""
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.2f}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table: the header row, then one line per row."""
    cells = [list(headers)] + [[cell(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )
