"""Text for people: aligned tables, sparklines, and the per-metric summary the CLI and demo print."""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any

__all__ = ["fmt_value", "metrics_table", "printable", "sparkline", "table"]

_BARS = "▁▂▃▄▅▆▇█"
# C0 and C1 control characters and DEL: a terminal would act on them (clear the screen,
# retitle the window, move the cursor) instead of showing them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with its control characters as escapes (``\\x1b``), safe to print to a terminal.

    Names, values and config come from whoever posted them; printed as they are, an
    escape sequence in a metric name would act on the terminal of whoever reads it.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def fmt_value(value: Any) -> str:
    """A value as a person reads it: floats to 6 significant digits, the rest as they are (printable)."""
    return f"{value:.6g}" if isinstance(value, float) else printable(str(value))


def sparkline(values: list[float], width: int = 60) -> str:
    """``values`` as a line of block characters, averaged down to at most ``width``."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) > width:
        size = len(finite) / width
        chunks = [finite[int(i * size) : max(int(i * size) + 1, int((i + 1) * size))] for i in range(width)]
        finite = [sum(chunk) / len(chunk) for chunk in chunks]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    return "".join(_BARS[min(len(_BARS) - 1, int((v - lo) / span * len(_BARS)))] for v in finite)


def table(headers: list[str], rows: list[tuple[Any, ...]]) -> str:
    """Rows under headers and a rule, columns aligned (numbers to the right)."""
    cells = [headers, *[[printable(str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [len(cells) > 1 and all(_looks_numeric(row[i]) for row in cells[1:]) for i in range(len(headers))]
    lines = [
        "  ".join(cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def metrics_table(metrics: dict[str, list[tuple[_dt.datetime, Any]]], *, when_and_trend: bool = False) -> str:
    """Per metric: its count, last, min and max (and the last date and a sparkline)."""
    headers = ["metric", "count", "last", "min", "max"]
    if when_and_trend:
        headers += ["last at (UTC)", "trend"]
    rows = []
    for name in sorted(metrics):
        points = metrics[name]
        numbers = [v for _, v in points if isinstance(v, (int, float))]
        row: tuple[Any, ...] = (
            name,
            f"{len(points):,}",
            fmt_value(points[-1][1]) if points else "",
            fmt_value(min(numbers)) if numbers else "",
            fmt_value(max(numbers)) if numbers else "",
        )
        if when_and_trend:
            last_at = points[-1][0].strftime("%Y-%m-%d %H:%M:%S") if points else ""
            row += (last_at, sparkline(numbers, 24) if len(numbers) > 1 else "")
        rows.append(row)
    return table(headers, rows)


def _looks_numeric(text: str) -> bool:
    if not text:
        return True
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
