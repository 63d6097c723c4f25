"""Output shared by the benchmarks that measure one row at a time: a readable line per row as soon as it is
measured (long runs show progress), then every row as one JSON object per line, for scripts."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any


def print_rows(rows: Iterable[dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """Print ``describe(row)`` for each row as ``rows`` yields it, then each row as JSON; return the rows."""
    measured = []
    for row in rows:
        measured.append(row)
        print(describe(row), flush=True)
    for row in measured:
        print(json.dumps(row))
    return measured


def figures(values: Iterable[float], digits: int = 2, separator: str = ", ") -> str:
    """``values`` written with ``digits`` decimals, for a row's readable line."""
    return separator.join(f"{value:.{digits}f}" for value in values)
