"""How the CLI shows answers: readable tables (rich when installed), or JSON for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

Column = tuple[str, str]
"""(header, key): a key is a dotted path into each row (``dataset.rows``)."""


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    print(json.dumps(data, indent=2))


def _cell(row: dict[str, Any], key: str) -> str:
    value: Any = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table(
    rows: Sequence[dict[str, Any]], columns: Sequence[Column], *, title: str | None = None, header: bool = True
) -> None:
    """Print ``rows`` as a table on stdout: a rich table when rich is installed, else aligned plain text."""
    cells = [[_cell(row, key) for _, key in columns] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        if title:
            print(title)
        widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, (h, _) in enumerate(columns)]
        if header:
            print("  ".join(h.ljust(w) for (h, _), w in zip(columns, widths, strict=True)).rstrip())
        for line in cells:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        return
    out = Table(title=title, show_header=header)
    for name, _ in columns:
        out.add_column(name, overflow="fold")
    for line in cells:
        out.add_row(*line)
    Console(file=sys.stdout, width=max(100, Console().width)).print(out)


def fields(data: dict[str, Any], keys: Sequence[Column], *, title: str | None = None) -> None:
    """Print one resource as a two-column table of its chosen fields."""
    table(
        [{"field": header, "value": _cell(data, key)} for header, key in keys],
        [("", "field"), ("", "value")],
        title=title,
    )
