"""Points with their step, epoch and rank: how they are read out of metadata, and written out.

Shared by the embedded server (the points read-back extension, ``format=csv|json``), the
client (``Run.metrics(detail=True)``) and the command line (``metrics download``), so one
rule says where a point's step, epoch and rank come from and one writer owns each export
format. This module starts no threads and does no I/O beyond the stream it is given.

Where the numbers come from:

* ``step``, ``epoch`` and ``rank`` are members of the point's metadata. The logger writes
  JSON (``{"rank": 0, "epoch": 1, "step": 42}``); upstream's training code writes
  ``{rank: 0, epoch:1}``, which is not JSON, so such text is read with a lenient pattern.
* a rank missing from the metadata is taken from the name's ``" @ <rank>"`` suffix, the
  dashboard's convention for per-rank series.
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import io
import json
import math
import re
from typing import Any, Final, Iterable, Iterator, NamedTuple, Optional, TextIO

__all__ = [
    "EXPORT_COLUMNS",
    "MetricPoint",
    "csv_cell",
    "csv_pieces",
    "json_pieces",
    "parse_metadata",
    "split_name",
    "to_number",
    "write_csv",
    "write_json",
]

EXPORT_COLUMNS: Final = ("name", "date", "step", "epoch", "rank", "value", "cumulative", "metadata")
"""The columns of ``metrics download --format csv|json`` and of ``format=csv|json`` on the server."""

_RANK_SUFFIX: Final = re.compile(r"^(?P<metric>.*\S)\s+@\s+(?P<rank>\d{1,9})$")
# Upstream's metadata is Python-ish text such as ``{rank: 0, epoch:1.5}``: keys with or
# without quotes, numbers after a colon. Only the three keys we read are looked for.
_LENIENT: Final = re.compile(r"""["']?\b(step|epoch|rank)\b["']?\s*:\s*(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)""")

# A cell a spreadsheet would read as a formula (OWASP "CSV injection"): = + - @, and a
# tab or carriage return before one.
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")
_ROWS_PER_PIECE: Final = 2000

Number = Optional[float]


class MetricPoint(NamedTuple):
    """One stored point with what its metadata says about it.

    Attributes:
        date: when it was recorded (aware, UTC).
        value: a number where the stored text is one, else the text.
        step: the training step, or None when the metadata has none.
        epoch: the epoch (an int, or a float as upstream sends ``1.5``), or None.
        rank: the worker's rank, from the metadata or the name's ``@ <rank>``, or None.
        cumulative: whether the series is a running total.
        metadata: the metadata text as stored.
    """

    date: _dt.datetime
    value: Any
    step: int | None
    epoch: int | float | None
    rank: int | None
    cumulative: bool
    metadata: str


def to_number(value: Any) -> Any:
    """A stored value as a person means it: ``"0.5"`` -> 0.5, ``"12"`` -> 12, other text unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def split_name(name: str) -> tuple[str, int | None]:
    """``"loss @ 1"`` -> ``("loss", 1)``; a name without a rank suffix -> ``(name, None)``."""
    match = _RANK_SUFFIX.match(name)
    if match is None:
        return name, None
    return match.group("metric"), int(match.group("rank"))


def _whole(value: Any) -> int | float | None:
    """A JSON number as an int when it is whole, else a float; anything else is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        if value.is_integer():
            return int(value)
    return value


@functools.lru_cache(maxsize=4096)
def parse_metadata(text: str) -> tuple[int | None, int | float | None, int | None]:
    """The ``(step, epoch, rank)`` a metadata text carries; None for each it lacks.

    JSON objects are read exactly (only top-level members count); other text, such as
    upstream's ``{rank: 0, epoch:1}``, is searched for ``step``, ``epoch`` and ``rank``
    followed by a number. A step or rank that is not a whole number is ignored.
    """
    found: dict[str, int | float] = {}
    try:
        data = json.loads(text) if text.startswith("{") else None
    except RecursionError:  # stored as sent: JSON nested past the parser's depth carries none of them
        data = None
    except ValueError:
        data = None
        for key, number in _LENIENT.findall(text):
            value = _whole(float(number))
            if value is not None:
                found.setdefault(key, value)
    else:
        if isinstance(data, dict):
            for key in ("step", "epoch", "rank"):
                value = _whole(data.get(key))
                if value is not None:
                    found[key] = value
    step = found.get("step")
    rank = found.get("rank")
    return (
        step if isinstance(step, int) else None,
        found.get("epoch"),
        rank if isinstance(rank, int) and rank >= 0 else None,
    )


def _row(name: str, p: MetricPoint) -> list[Any]:
    value = p.value
    if isinstance(value, float) and not math.isfinite(value):
        value = str(value)  # JSON has no NaN or infinity; the dashboard stores them as text too
    return [name, p.date.isoformat(), p.step, p.epoch, p.rank, value, p.cumulative, p.metadata]


def csv_cell(cell: Any) -> Any:
    """A cell as the CSV writer writes it: a missing number is empty, and text a spreadsheet
    would take for a formula gets a leading ``'`` (OWASP's advice against CSV injection).

    Text that reads as a number (``-0.5``, ``+1e3``, ``-inf``) is left alone, and so are
    numbers: a value column of -0.5 stays a number in the spreadsheet. Names, text values
    and metadata starting with ``=``, ``+``, ``-`` or ``@`` (``=HYPERLINK(...)``,
    ``-2+3``) come out as ``'=HYPERLINK(...)``, shown as text.
    """
    if cell is None:
        return ""
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        try:
            float(cell)
        except ValueError:
            return "'" + cell
    return cell


def csv_pieces(series: Iterable[tuple[str, Iterable[MetricPoint]]]) -> Iterator[str]:
    """CSV with a header of :data:`EXPORT_COLUMNS`, in pieces of a few thousand rows (every cell
    through :func:`csv_cell`): the one CSV writer, for a file or a streamed answer."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    rows = 0
    for name, points in series:
        for p in points:
            writer.writerow([csv_cell(cell) for cell in _row(name, p)])
            rows += 1
            if rows >= _ROWS_PER_PIECE:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
                rows = 0
    yield buffer.getvalue()


def json_pieces(series: Iterable[tuple[str, Iterable[MetricPoint]]]) -> Iterator[str]:
    """A JSON list of objects keyed by :data:`EXPORT_COLUMNS` (a missing number is null), one
    object per line, in pieces of a few thousand lines; ASCII (text beyond it is escaped)."""
    lines: list[str] = []
    first = True
    for name, points in series:
        for p in points:
            lines.append(
                ("[\n" if first else ",\n") + json.dumps(dict(zip(EXPORT_COLUMNS, _row(name, p))), allow_nan=False)
            )
            first = False
            if len(lines) >= _ROWS_PER_PIECE:
                yield "".join(lines)
                lines.clear()
    lines.append("[]\n" if first else "\n]\n")
    yield "".join(lines)


def write_csv(series: Iterable[tuple[str, Iterable[MetricPoint]]], out: TextIO) -> None:
    """Write points as CSV (see :func:`csv_pieces`)."""
    for piece in csv_pieces(series):
        out.write(piece)


def write_json(series: Iterable[tuple[str, Iterable[MetricPoint]]], out: TextIO) -> None:
    """Write points as a JSON list (see :func:`json_pieces`); a million points never become one string."""
    for piece in json_pieces(series):
        out.write(piece)
