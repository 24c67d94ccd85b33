"""The metrics' tables: a chunk's keys in ``chunks``, its points in that row or in ``chunk_bodies``.

A chunk is one series' points of one batch (see :mod:`.chunks` for the body's format).
Its keys (owner, name, first and last date, arrival id, count) are a row of ``chunks``;
its body is a row of ``chunk_bodies``, or, when it is small (a single POST's, a few
points), the row's own ``data``: one row to write, not two. Bodies are kept out of
``chunks`` because SQLite compares a WITHOUT ROWID table's whole row while it scans a
range of keys, so a run's catalog or statistics would otherwise read every point.
Databases written before ``chunk_bodies`` existed hold each chunk's points as JSON text
in ``data``; they are read as they are and take new chunks, so they need no migration.
A row's ``data`` says where its points are: ``''`` for ``chunk_bodies``, else in it.

Arrival ids order what arrived (live charts ask for what came after an id). They are
taken under SQLite's write lock past the newest an owner has and past the newest body,
so two servers started on one database (the default file, say) do not collide: ids are
unique among bodies and within an owner, and grow in commit order within an owner.

The functions here run SQL on a connection the caller owns (writes inside the caller's
transaction); :class:`.store.Store` owns connections and locks. No threads are started.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, Callable, ContextManager, Final, Iterable, NamedTuple

from .chunks import Chunk, EncodedChunk, decode_chunk
from .columns import SeriesColumns, merge_columns, windows
from .summaries import Summary, combine, summarize

__all__ = [
    "CHUNK_ROWS",
    "SCHEMA",
    "ChunkKey",
    "chunk_keys",
    "delete_chunks",
    "fill_values",
    "insert_chunks",
    "newest_id",
    "read_chunks",
    "series_pieces",
]

SCHEMA: Final = """
-- One row per (batch, metric name): the keys of the points of one series that arrived
-- together; ``id`` orders arrivals. ``owner`` is a run's id or minus a pod's, so that one
-- clustered key serves both. ``data``: see chunk_tables.py.
CREATE TABLE IF NOT EXISTS chunks (
    owner INTEGER NOT NULL,
    name TEXT NOT NULL,
    first_date INTEGER NOT NULL,
    id INTEGER NOT NULL,
    last_date INTEGER NOT NULL,
    count INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (owner, name, first_date, id)
) WITHOUT ROWID;
-- Arrival order per owner, for reads of "what arrived after chunk N" (live charts).
CREATE INDEX IF NOT EXISTS chunks_arrival ON chunks (owner, id);
-- The bodies of chunks larger than a few points, in the binary format of chunks.py.
CREATE TABLE IF NOT EXISTS chunk_bodies (
    id INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
-- Each series' number of points, newest date, and the value at that date (as text), its
-- smallest and largest number, kept with every insert, so that the runs page's statistics
-- and the runs table read one row per series, not one per chunk (see summaries.py).
-- last_value is NULL until the values are summarised (rows counted at open, below).
CREATE TABLE IF NOT EXISTS series_stats (
    owner INTEGER NOT NULL,
    name TEXT NOT NULL,
    points INTEGER NOT NULL,
    last_date INTEGER NOT NULL,
    last_value TEXT,
    min_value REAL,
    max_value REAL,
    PRIMARY KEY (owner, name)
) WITHOUT ROWID;
-- A database written before series_stats existed gets its counts once, at open. The
-- condition is a one-row table joined first, so with counts present no chunk is read
-- (a WHERE NOT EXISTS still scanned them all: 100 ms per million chunks).
INSERT INTO series_stats (owner, name, points, last_date)
    SELECT owner, name, SUM(count), MAX(last_date)
    FROM (SELECT 1 AS one WHERE NOT EXISTS (SELECT 1 FROM series_stats)) AS fresh CROSS JOIN chunks
    GROUP BY owner, name;
"""

CHUNK_ROWS: Final = "chunks LEFT JOIN chunk_bodies b ON chunks.data = '' AND b.id = chunks.id"
"""A FROM clause: each chunk's row with its body (``data, body``, see :func:`.chunks.decode_chunk`)."""

_INLINE_MAX: Final = 256  # bodies up to this many bytes stay in the chunk's row
_INSERT: Final = "INSERT INTO chunks (owner, name, first_date, id, last_date, count, data) VALUES (?,?,?,?,?,?,?)"
# The newest body's id, the newest id of an owner, and whether a run has the owner's id:
# one statement, as a single POST's whole work is two.
_NEXT_IDS: Final = (
    "SELECT (SELECT MAX(id) FROM chunk_bodies), (SELECT MAX(id) FROM chunks WHERE owner = ?), "
    "EXISTS (SELECT 1 FROM runs WHERE id = ?)"
)


# Portable upsert (SQLite >= 3.24 and PostgreSQL): no MAX(a, b) / GREATEST. Of equal dates
# the value that arrived last is the last value, as reads order points by (date, arrival).
_COUNT: Final = """
INSERT INTO series_stats (owner, name, points, last_date, last_value, min_value, max_value) VALUES (?,?,?,?,?,?,?)
ON CONFLICT (owner, name) DO UPDATE SET points = series_stats.points + excluded.points,
    last_value = CASE WHEN excluded.last_date >= series_stats.last_date
        THEN excluded.last_value ELSE series_stats.last_value END,
    last_date = CASE WHEN excluded.last_date > series_stats.last_date
        THEN excluded.last_date ELSE series_stats.last_date END,
    min_value = CASE WHEN series_stats.min_value IS NULL OR excluded.min_value < series_stats.min_value
        THEN excluded.min_value ELSE series_stats.min_value END,
    max_value = CASE WHEN series_stats.max_value IS NULL OR excluded.max_value > series_stats.max_value
        THEN excluded.max_value ELSE series_stats.max_value END
"""
_VALUE_COLUMNS: Final = (("last_value", "TEXT"), ("min_value", "REAL"), ("max_value", "REAL"))


def newest_id(conn: sqlite3.Connection) -> int:
    """The highest arrival id in the database (0 when it holds no chunk)."""
    return int(conn.execute("SELECT MAX(id) FROM chunks").fetchone()[0] or 0)


def insert_chunks(
    conn: sqlite3.Connection, owner: int, chunks: list[EncodedChunk], next_id: int, *, of_run: bool
) -> int | None:
    """Insert encoded chunks of ``owner`` with arrival ids from ``next_id`` on (or past what others took).

    Args:
        conn: a connection inside a write transaction.
        owner: a run's id (``of_run``), or minus a pod's.
        chunks: what :func:`.chunks.encode_chunks` made.
        next_id: the lowest id to take.
        of_run: ``owner`` is a run's id, which must exist.

    Returns:
        The next free id; None, and nothing inserted, when ``of_run`` and no run has that id.
    """
    body_max, own_max, run_exists = conn.execute(_NEXT_IDS, (owner, owner)).fetchone()
    if of_run and not run_exists:
        return None
    first = max(next_id, (body_max or 0) + 1, (own_max or 0) + 1)
    if len(chunks) == 1 and len(chunks[0][4]) <= _INLINE_MAX:  # a single POST's: one row
        name, lo, hi, n, body = chunks[0]
        conn.execute(_INSERT, (owner, name, lo, first, hi, n, body))
        conn.execute(_COUNT, (owner, name, *summarize(decode_chunk(0, "", body))))
        return first + 1
    rows = [
        (owner, name, lo, first + i, hi, n, body if len(body) <= _INLINE_MAX else "")
        for i, (name, lo, hi, n, body) in enumerate(chunks)
    ]
    conn.executemany(_INSERT, rows)
    bodies = [(row[3], chunk[4]) for row, chunk in zip(rows, chunks) if not row[6]]
    if bodies:
        conn.executemany("INSERT INTO chunk_bodies (id, body) VALUES (?, ?)", bodies)
    totals: dict[str, Summary] = {}
    for name, _, _, _, body in chunks:
        totals[name] = combine(totals.get(name), summarize(decode_chunk(0, "", body)))
    conn.executemany(_COUNT, [(owner, name, *summary) for name, summary in totals.items()])
    return first + len(chunks)


def delete_chunks(conn: sqlite3.Connection, owner: int) -> None:
    """Delete every chunk of ``owner`` with its body, inside the caller's transaction."""
    conn.execute("DELETE FROM chunk_bodies WHERE id IN (SELECT id FROM chunks WHERE owner = ? AND data = '')", (owner,))
    conn.execute("DELETE FROM chunks WHERE owner = ?", (owner,))
    conn.execute("DELETE FROM series_stats WHERE owner = ?", (owner,))


def fill_values(conn: sqlite3.Connection) -> int:
    """Summarise the values of the series that have none yet, inside the caller's transaction.

    A database written before series_stats kept values gets the columns; the series
    counted at open (the schema's INSERT) or before have their chunks read once. Where
    every series has its values, this is one scan of series_stats (a row per series).

    Returns:
        How many series were summarised.
    """
    try:
        conn.execute("SELECT last_value FROM series_stats WHERE 1 = 0")
    except sqlite3.OperationalError:  # the table predates the value columns
        for column, kind in _VALUE_COLUMNS:
            conn.execute(f"ALTER TABLE series_stats ADD COLUMN {column} {kind}")
    missing = conn.execute("SELECT owner, name FROM series_stats WHERE last_value IS NULL").fetchall()
    for owner, name in missing:
        rows = conn.execute(
            f"SELECT chunks.id, data, body FROM {CHUNK_ROWS} WHERE owner = ? AND name = ? ORDER BY chunks.id",
            (owner, name),
        ).fetchall()
        total: Summary | None = None
        for row in rows:
            total = combine(total, summarize(decode_chunk(*row)))
        if total is not None:
            conn.execute(
                "UPDATE series_stats SET last_value = ?, min_value = ?, max_value = ? WHERE owner = ? AND name = ?",
                (total[2], total[3], total[4], owner, name),
            )
    return len(missing)


def read_chunks(
    conn: sqlite3.Connection,
    owner: int,
    chunk_ids: Iterable[int],
    decode: Callable[[int, str | bytes, bytes | None], Chunk],
) -> dict[int, Chunk]:
    """The chunks of ``owner`` with these ids, each made by ``decode(id, data, body)``."""
    ids = list(chunk_ids)
    out: dict[int, Chunk] = {}
    for start in range(0, len(ids), 500):  # SQLite allows a limited number of parameters
        part = ids[start : start + 500]
        elsewhere = []  # the chunks whose body is in chunk_bodies
        query = f"SELECT id, data FROM chunks WHERE owner = ? AND id IN ({', '.join('?' for _ in part)})"
        for chunk_id, data in conn.execute(query, [owner, *part]):
            if data:
                out[chunk_id] = decode(chunk_id, data, None)
            else:
                elsewhere.append(chunk_id)
        query = f"SELECT id, body FROM chunk_bodies WHERE id IN ({', '.join('?' for _ in elsewhere)})"
        for chunk_id, body in conn.execute(query, elsewhere):
            out[chunk_id] = decode(chunk_id, "", body)
    return out


class ChunkKey(NamedTuple):
    """A chunk's keys: its series, date range, arrival id and number of points."""

    name: str
    first_date: int
    id: int
    last_date: int
    points: int


def chunk_keys(
    read: Callable[[], ContextManager[sqlite3.Connection]],
    owner: int,
    names: Sequence[str] | None,
    since_us: int | None,
    until_us: int | None,
    page: int = 5000,
) -> Iterator[ChunkKey]:
    """The keys of ``owner``'s chunks in (name, first date, id) order, read ``page`` at a time.

    Each page is read on a connection of its own (``read()``), after the last key of
    the one before (row values, as PostgreSQL has them too), so a reader that stops
    half-way (a client that stops reading an export) holds no cursor and no lock.
    """
    conditions: list[tuple[str, Any]] = [("last_date >= ?", since_us), ("first_date <= ?", until_us)]
    where = ["owner = ?"] + [condition for condition, value in conditions if value is not None]
    args: list[Any] = [owner] + [value for _, value in conditions if value is not None]
    if names is not None:
        where.append(f"name IN ({', '.join('?' for _ in names)})")
        args.extend(names)
    base = f"SELECT name, first_date, id, last_date, count FROM chunks WHERE {' AND '.join(where)}"
    order = f" ORDER BY name, first_date, id LIMIT {int(page)}"
    after: tuple[str, int, int] | None = None
    while True:
        with read() as conn:
            if after is None:
                rows = conn.execute(base + order, args).fetchall()
            else:
                rows = conn.execute(
                    base + " AND (name, first_date, id) > (?, ?, ?)" + order, [*args, *after]
                ).fetchall()
        for row in rows:
            yield ChunkKey(*row)
        if len(rows) < page:
            return
        after = (rows[-1][0], rows[-1][1], rows[-1][2])


def series_pieces(
    read: Callable[[], ContextManager[sqlite3.Connection]],
    owner: int,
    names: Sequence[str] | None,
    dates: tuple[int | None, int | None] = (None, None),
    points: int = 50_000,
) -> Iterator[SeriesColumns]:
    """``owner``'s series, by name, in pieces of about ``points`` points (see :func:`.columns.windows`),
    with only the points dated within ``dates`` (since, until; inclusive, None for open).

    Every piece is read when asked for, on a connection of its own: nothing stays open
    between two pieces, so an export streams in bounded memory whatever its size, and a
    client that stops reading holds no database resource.
    """
    since_us, until_us = dates
    for name, group in windows(chunk_keys(read, owner, names, since_us, until_us), points):
        with read() as conn:
            chunks = read_chunks(conn, owner, [k.id for k in group], decode_chunk)
        piece = merge_columns(name, [chunks[k.id] for k in group if k.id in chunks], since_us, until_us)
        if len(piece):
            yield piece
