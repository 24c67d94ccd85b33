"""The metrics' tables: a chunk's keys in ``chunks``, its points in that row or in ``chunk_bodies``.

A chunk is one series' points of one batch (see :mod:`.chunks` for the body's format).
Its keys (owner, name, first and last date, arrival id, count) are a row of ``chunks``;
its body is a row of ``chunk_bodies``, or, when it is small (a single POST's, a few
points), the row's own ``data``: one row to write, not two. Bodies are kept out of
``chunks`` because SQLite compares a WITHOUT ROWID table's whole row while it scans a
range of keys, so a run's catalog or statistics would otherwise read every point.
Databases written before ``chunk_bodies`` existed hold each chunk's points as JSON text
in ``data``; they are read as they are and take new chunks, so they need no migration.
A row's ``data`` says where its points are: empty (``''`` on SQLite, ``''::bytea`` on
PostgreSQL) for ``chunk_bodies``, else in it. The tables' DDL is :mod:`.schema`'s.

Arrival ids order what arrived (live charts ask for what came after an id). The database
gives them (:meth:`.database.Database.take_ids`): ids are unique among bodies and within
an owner, and grow in commit order within an owner, also when several processes or
servers write to one database.

The functions here run SQL on a connection the caller owns (writes inside the caller's
transaction); :class:`.store.Store` owns the database. No threads are started.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Callable, ContextManager, Final, Iterable, NamedTuple

from .chunks import Chunk, EncodedChunk, decode_chunk
from .columns import SeriesColumns, merge_columns, windows
from .database import Connection, Database
from .summaries import Summary, combine, summarize

__all__ = [
    "CHUNK_ROWS",
    "ChunkKey",
    "chunk_keys",
    "delete_chunks",
    "fill_values",
    "insert_chunks",
    "newest_id",
    "read_chunks",
    "series_pieces",
]

CHUNK_ROWS: Final = "chunks LEFT JOIN chunk_bodies b ON chunks.data = '' AND b.id = chunks.id"
"""A FROM clause: each chunk's row with its body (``data, body``, see :func:`.chunks.decode_chunk`)."""

_INLINE_MAX: Final = 256  # bodies up to this many bytes stay in the chunk's row
_INSERT: Final = "INSERT INTO chunks (owner, name, first_date, id, last_date, count, data) VALUES (?,?,?,?,?,?,?)"


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


def newest_id(conn: Connection) -> int:
    """The highest arrival id in the database (0 when it holds no chunk)."""
    return int(conn.execute("SELECT MAX(id) FROM chunks").fetchone()[0] or 0)


def insert_chunks(
    conn: Connection, db: Database, owner: int, chunks: list[EncodedChunk], next_id: int, *, of_run: bool
) -> int | None:
    """Insert encoded chunks of ``owner`` with arrival ids the database gives (see :meth:`.Database.take_ids`).

    Args:
        conn: a connection inside a write transaction.
        db: the database ``conn`` belongs to.
        owner: a run's id (``of_run``), or minus a pod's.
        chunks: what :func:`.chunks.encode_chunks` made.
        next_id: the lowest id to take.
        of_run: ``owner`` is a run's id, which must exist.

    Returns:
        The id after the last one taken (SQLite's next floor); None, and nothing
        inserted, when ``of_run`` and no run has that id.
    """
    ids = db.take_ids(conn, owner, len(chunks), of_run=of_run, floor=next_id)
    if ids is None:
        return None
    if len(chunks) == 1 and len(chunks[0][4]) <= _INLINE_MAX:  # a single POST's: one row
        name, lo, hi, n, body = chunks[0]
        conn.execute(_INSERT, (owner, name, lo, ids[0], hi, n, body))
        conn.execute(_COUNT, (owner, name, *summarize(decode_chunk(0, "", body))))
        return ids[0] + 1
    empty = db.empty_data
    rows = [
        (owner, name, lo, chunk_id, hi, n, body if len(body) <= _INLINE_MAX else empty)
        for chunk_id, (name, lo, hi, n, body) in zip(ids, chunks)
    ]
    conn.executemany(_INSERT, rows)
    bodies = [(row[3], chunk[4]) for row, chunk in zip(rows, chunks) if not row[6]]
    if bodies:
        conn.executemany("INSERT INTO chunk_bodies (id, body) VALUES (?, ?)", bodies)
    totals: dict[str, Summary] = {}
    for name, _, _, _, body in chunks:
        totals[name] = combine(totals.get(name), summarize(decode_chunk(0, "", body)))
    conn.executemany(_COUNT, [(owner, name, *summary) for name, summary in totals.items()])
    return ids[-1] + 1


def delete_chunks(conn: Connection, owner: int) -> None:
    """Delete every chunk of ``owner`` with its body, inside the caller's transaction."""
    conn.execute("DELETE FROM chunk_bodies WHERE id IN (SELECT id FROM chunks WHERE owner = ? AND data = '')", (owner,))
    conn.execute("DELETE FROM chunks WHERE owner = ?", (owner,))
    conn.execute("DELETE FROM series_stats WHERE owner = ?", (owner,))


def fill_values(conn: Connection) -> int:
    """Summarise the values of the series that have none yet, inside the caller's transaction.

    The series counted before series_stats kept values (the schema adds the columns, see
    :mod:`.schema`) have their chunks read once. Where
    every series has its values, this is one scan of series_stats (a row per series).

    Returns:
        How many series were summarised.
    """
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
    conn: Connection,
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
        if not elsewhere:
            continue  # PostgreSQL refuses an empty IN ()
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
    read: Callable[[], ContextManager[Connection]],
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
        if not names:
            return  # PostgreSQL refuses an empty IN ()
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
    read: Callable[[], ContextManager[Connection]],
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
