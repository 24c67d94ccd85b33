"""Each series' last value, minimum and maximum, kept as its points are written.

The runs table (``GET /api/runs/table/``) shows, for a thousand runs, a few metrics'
last, min and max values; computing those from the points would decode every chunk
of every run. So each write also folds its chunks into the series' row of
``series_stats`` (:mod:`.chunk_tables` owns that table and its SQL), beside the point
count and newest date kept there:

* ``last_value``: the value of the point with the latest date (of equal dates, the one
  that arrived last), as the text the dashboard-shaped reads return (``"0.5"``, ``"5"``,
  ``"nan"``, or a text value such as ``"warming up"``; a lone surrogate, which no TEXT
  column holds, as U+FFFD; a long text, its first 1,000 characters);
* ``min_value``/``max_value``: over the values that are numbers (text that reads as a
  number counts; NaN and other text do not), NULL while there is none.

This module says what a chunk's summary is and how two combine; it runs no write. No
threads are started here.
"""

from __future__ import annotations

import math
import re
from array import array
from dataclasses import dataclass
from typing import Any, ContextManager, Final, Optional, Sequence, Tuple

from .chunks import Chunk
from .database import Connection

__all__ = ["SeriesSummary", "Summary", "SummaryMethods", "combine", "finite_or_text", "read_summaries", "summarize"]

Summary = Tuple[int, int, str, Optional[float], Optional[float]]
"""``(points, last date, last value as text, min, max)`` of a chunk or a series."""

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_TEXT_MAX: Final = 1000  # characters of a text value kept as a series' last value (a table cell)


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a run: its point count, newest value (as text), numeric min and max (None: none)."""

    run_id: int
    name: str
    count: int
    last_date: int
    last_value: str
    min_value: float | None
    max_value: float | None


def _numbers(values: Sequence[Any]) -> list[float]:
    """The values that are numbers, NaN left out (text that reads as a number counts)."""
    out = []
    for v in values:
        if type(v) is not float:
            try:
                v = float(v)
            except (TypeError, ValueError, OverflowError):
                continue
        if v == v:
            out.append(v)
    return out


def summarize(chunk: Chunk) -> Summary:
    """``(points, last date, last value as text, min, max)`` of one chunk (dates ascending, as written)."""
    values = chunk.values
    last = values[-1]
    low: float | None
    high: float | None
    if isinstance(values, array):  # every value a number: min and max at C speed
        # They pass over a NaN unless it comes first (every comparison with NaN is false).
        low, high = min(values), max(values)
        if low != low or high != high:
            numbers = _numbers(values)
            low, high = (min(numbers), max(numbers)) if numbers else (None, None)
    else:
        numbers = _numbers(values)
        low, high = (min(numbers), max(numbers)) if numbers else (None, None)
    text = (last if type(last) is str else str(last))[:_TEXT_MAX]
    # A text a database's TEXT column cannot hold (a lone surrogate, which the chunk keeps as
    # bytes) is shown with U+FFFD in its place: this is a summary for the table, not the value.
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return len(values), chunk.dates[-1], text, low, high


def combine(earlier: Summary | None, later: Summary) -> Summary:
    """One summary of two parts of a series; of equal last dates, ``later``'s value is the last."""
    if earlier is None:
        return later
    last = later if later[1] >= earlier[1] else earlier
    lows = [v for v in (earlier[3], later[3]) if v is not None]
    highs = [v for v in (earlier[4], later[4]) if v is not None]
    return (
        earlier[0] + later[0],
        last[1],
        last[2],
        min(lows) if lows else None,
        max(highs) if highs else None,
    )


def read_summaries(conn: Connection) -> list[SeriesSummary]:
    """Every run's series summaries (pods' left out), by run and name."""
    rows = conn.execute(
        "SELECT owner, name, points, last_date, COALESCE(last_value, ''), min_value, max_value FROM series_stats "
        "WHERE owner > 0 ORDER BY owner, name"
    ).fetchall()
    return [SeriesSummary(*row) for row in rows]


class SummaryMethods:
    """The store's reads for the runs table, mixed into :class:`~.store.Store` (which owns the
    connections): kept here beside their SQL, as :class:`~.writer_tables.WriterMethods` is."""

    def _read(self) -> ContextManager[Connection]:
        raise NotImplementedError

    def series_summaries(self) -> list[SeriesSummary]:
        """Every run's series with count, last value, min and max, read from one small table."""
        with self._read() as conn:
            return read_summaries(conn)

    def run_configs(self) -> dict[int, str]:
        """Every stored run configuration as JSON text, by run id."""
        with self._read() as conn:
            return {run_id: str(text) for run_id, text in conn.execute("SELECT run_id, config FROM run_configs")}


def finite_or_text(value: float | None) -> Any:
    """A min or max for a JSON answer: infinities as text, as the points read-back writes them."""
    if value is not None and math.isinf(value):
        return str(value)
    return value
