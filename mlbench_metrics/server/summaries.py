"""Each series' count, last value, minimum and maximum, kept as its points are written.

The runs table (``GET /api/runs/table/``) shows, for a thousand runs, a few metrics'
last, min and max values; computing those from the points would decode every chunk
of every run. So each write also folds its chunks into one small row per series of
``series_summaries``, inside the write's transaction, with one upsert per chunk.

* ``last_value``: the value of the point with the latest date (of equal dates, the one
  that arrived last), as the text the dashboard-shaped reads return (``"0.5"``, ``"5"``,
  ``"nan"``, or a text value such as ``"warming up"``; a lone surrogate, which no TEXT
  column holds, as U+FFFD);
* ``min_value``/``max_value``: over the values that are numbers (text that reads as a
  number counts; NaN and other text do not), NULL while there is none.

The SQL is portable to PostgreSQL (``INSERT ... ON CONFLICT ... DO UPDATE`` with
``excluded``, ``CASE`` instead of SQLite's two-argument ``MIN``/``MAX``); only the
parameter marks (``?``) differ. Databases written before this table existed get their
rows once, when a store opens them (:func:`backfill`). No threads are started here.
"""

from __future__ import annotations

import math
import re
import sqlite3
from array import array
from dataclasses import dataclass
from typing import Any, ContextManager, Final, Iterable, Sequence

from .chunk_tables import CHUNK_ROWS
from .chunks import Chunk, EncodedChunk, decode_chunk

__all__ = [
    "SCHEMA",
    "SeriesSummary",
    "SummaryMethods",
    "backfill",
    "delete_summaries",
    "read_summaries",
    "record_summaries",
    "summarize",
]

SCHEMA: Final = """
-- One row per series (owner as in chunks): what the runs table shows without reading points.
CREATE TABLE IF NOT EXISTS series_summaries (
    owner INTEGER NOT NULL,
    name TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_date INTEGER NOT NULL,
    last_value TEXT NOT NULL,
    min_value REAL,
    max_value REAL,
    PRIMARY KEY (owner, name)
);
"""

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_UPSERT: Final = """
INSERT INTO series_summaries (owner, name, count, last_date, last_value, min_value, max_value)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (owner, name) DO UPDATE SET
    count = series_summaries.count + excluded.count,
    last_value = CASE WHEN excluded.last_date >= series_summaries.last_date
        THEN excluded.last_value ELSE series_summaries.last_value END,
    last_date = CASE WHEN excluded.last_date >= series_summaries.last_date
        THEN excluded.last_date ELSE series_summaries.last_date END,
    min_value = CASE WHEN series_summaries.min_value IS NULL OR excluded.min_value < series_summaries.min_value
        THEN excluded.min_value ELSE series_summaries.min_value END,
    max_value = CASE WHEN series_summaries.max_value IS NULL OR excluded.max_value > series_summaries.max_value
        THEN excluded.max_value ELSE series_summaries.max_value END
"""


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


def summarize(chunk: Chunk) -> tuple[int, int, str, float | None, float | None]:
    """``(count, last date, last value as text, min, max)`` of one chunk (dates ascending, as written)."""
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
    text = last if type(last) is str else str(last)
    # A text a database's TEXT column cannot hold (a lone surrogate, which the chunk keeps as
    # bytes) is shown with U+FFFD in its place: this is a summary for the table, not the value.
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    return len(values), chunk.dates[-1], text, low, high


def _row(owner: int, name: str, chunk: Chunk) -> tuple[Any, ...]:
    count, last_date, last_value, low, high = summarize(chunk)
    # A huge integer read as a float may overflow to inf: kept, as the value is that large.
    return owner, name, count, last_date, last_value, low, high


def record_summaries(conn: sqlite3.Connection, owner: int, chunks: Iterable[EncodedChunk]) -> None:
    """Fold freshly encoded chunks of ``owner`` into their series' rows, inside the caller's transaction."""
    rows = [_row(owner, name, decode_chunk(0, "", body)) for name, _, _, _, body in chunks]
    conn.executemany(_UPSERT, rows)


def delete_summaries(conn: sqlite3.Connection, owner: int) -> None:
    """Delete ``owner``'s rows, inside the caller's transaction."""
    conn.execute("DELETE FROM series_summaries WHERE owner = ?", (owner,))


def backfill(conn: sqlite3.Connection) -> int:
    """Give every series that has chunks but no row its row (databases written before this table).

    Reads the points of those series only; on a database that has every row it is one
    scan of the chunks' keys. Runs inside the caller's write transaction.

    Returns:
        How many series got a row.
    """
    missing = conn.execute(
        "SELECT DISTINCT owner, name FROM chunks c WHERE NOT EXISTS "
        "(SELECT 1 FROM series_summaries s WHERE s.owner = c.owner AND s.name = c.name)"
    ).fetchall()
    for owner, name in missing:
        rows = conn.execute(
            f"SELECT chunks.id, data, body FROM {CHUNK_ROWS} WHERE owner = ? AND name = ? ORDER BY chunks.id",
            (owner, name),
        ).fetchall()
        conn.executemany(_UPSERT, [_row(owner, name, decode_chunk(*row)) for row in rows])
    return len(missing)


def read_summaries(conn: sqlite3.Connection) -> list[SeriesSummary]:
    """Every run's series summaries (pods' left out), by run and name."""
    rows = conn.execute(
        "SELECT owner, name, count, last_date, last_value, min_value, max_value FROM series_summaries "
        "WHERE owner > 0 ORDER BY owner, name"
    ).fetchall()
    return [SeriesSummary(*row) for row in rows]


class SummaryMethods:
    """The store's reads for the runs table, mixed into :class:`~.store.Store` (which owns the
    connections): kept here beside their SQL, as :class:`~.writer_tables.WriterMethods` is."""

    def _read(self) -> ContextManager[sqlite3.Connection]:
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
