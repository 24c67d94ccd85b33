"""The server's tables, written once for both engines, and the schema's version.

The DDL below is one text with a few words that differ between SQLite and PostgreSQL
(:data:`_WORDS`): 64-bit integers, ids the database assigns, binary columns, SQLite's
``WITHOUT ROWID``, and byte-order collation for names on PostgreSQL (so both order names
the same way, by code point).

The version: a table ``schema_version`` holds one row. A database without it was written
before versions existed (SQLite only: version 1, the chunk tables of :mod:`.chunk_tables`
with or without ``chunk_bodies``); it is brought to the current version by creating what
is missing and counting its series once (``series_stats``). A database whose version is newer than
:data:`SCHEMA_VERSION` is refused with a clear message rather than written to by code that
does not know its tables. To change the schema: raise :data:`SCHEMA_VERSION` and add the
statements that bring version N to N+1 to :data:`MIGRATIONS` under N (SQL both engines
speak, e.g. ``ALTER TABLE runs ADD COLUMN ...``); a new table goes in the DDL only, as
``CREATE TABLE IF NOT EXISTS``, which every migration runs first.

Several server processes may start at once on one PostgreSQL database: the schema is
checked and created under a transaction-scoped advisory lock, one process at a time.
"""

from __future__ import annotations

from typing import Final

from .database import Connection, SchemaError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "ensure_schema", "schema_statements"]

SCHEMA_VERSION: Final = 4
"""The version of the tables this code writes (3: ``series_stats``; 4: its value columns)."""

# A database written before series_stats existed gets its counts once. The condition is a
# one-row table joined first, so with counts present no chunk is read (a WHERE NOT EXISTS
# still scanned them all: 100 ms per million chunks).
_COUNT_SERIES: Final = (
    "INSERT INTO series_stats (owner, name, points, last_date) "
    "SELECT owner, name, SUM(count), MAX(last_date) "
    "FROM (SELECT 1 AS one WHERE NOT EXISTS (SELECT 1 FROM series_stats)) AS fresh CROSS JOIN chunks "
    "GROUP BY owner, name"
)

MIGRATIONS: Final[dict[int, list[str]]] = {
    2: [_COUNT_SERIES],  # series_stats itself is in the DDL, created before these run
}
"""What brings a database at version N to N+1, by N (from 2 on), after the DDL's
``CREATE ... IF NOT EXISTS`` statements made the tables and indexes it lacks."""

_ADVISORY_KEY: Final = 0x6D6C6265  # "mlbe": the schema lock of mlbench-metrics on PostgreSQL

_DDL: Final = """
-- One row per (batch, metric name): the keys of the points of one series that arrived
-- together; ``id`` orders arrivals. ``owner`` is a run's id or minus a pod's, so that one
-- clustered key serves both. ``data``: see chunk_tables.py.
CREATE TABLE IF NOT EXISTS chunks (
    owner {big} NOT NULL,
    name TEXT{bytewise} NOT NULL,
    first_date {big} NOT NULL,
    id {big} NOT NULL,
    last_date {big} NOT NULL,
    count INTEGER NOT NULL,
    data {data} NOT NULL,
    PRIMARY KEY (owner, name, first_date, id)
){without_rowid};
-- Arrival order per owner, for reads of "what arrived after chunk N" (live charts).
CREATE INDEX IF NOT EXISTS chunks_arrival ON chunks (owner, id);
-- The bodies of chunks larger than a few points, in the binary format of chunks.py.
CREATE TABLE IF NOT EXISTS chunk_bodies (
    id {big} PRIMARY KEY,
    body {blob} NOT NULL
);
-- Each series' number of points, newest date, and the value at that date (as text), its
-- smallest and largest number, kept with every insert, so that the runs page's statistics
-- and the runs table read one row per series, not one per chunk (see summaries.py).
-- last_value is NULL until the values are summarised (chunk_tables.fill_values).
CREATE TABLE IF NOT EXISTS series_stats (
    owner {big} NOT NULL,
    name TEXT{bytewise} NOT NULL,
    points {big} NOT NULL,
    last_date {big} NOT NULL,
    last_value TEXT,
    min_value {double},
    max_value {double},
    PRIMARY KEY (owner, name)
){without_rowid};
CREATE TABLE IF NOT EXISTS runs (
    id {serial},
    name TEXT NOT NULL,
    created_at {big} NOT NULL,
    finished_at {big},
    state TEXT NOT NULL DEFAULT 'initialized',
    job_id TEXT NOT NULL DEFAULT '',
    job_metadata TEXT NOT NULL DEFAULT '{{}}',
    num_workers INTEGER NOT NULL,
    cpu_limit TEXT NOT NULL DEFAULT '',
    image TEXT NOT NULL DEFAULT '',
    command TEXT NOT NULL DEFAULT '',
    backend TEXT NOT NULL DEFAULT '',
    run_on_all_nodes INTEGER NOT NULL DEFAULT 0,
    gpu_enabled INTEGER NOT NULL DEFAULT 0,
    light_target INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pods (
    id {pod_id},
    name TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL DEFAULT '{{}}',
    phase TEXT NOT NULL DEFAULT '',
    ip TEXT NOT NULL DEFAULT '',
    run_id {big}
);
-- A run's configuration (hyperparameters), as JSON text: an extension the dashboard lacks.
CREATE TABLE IF NOT EXISTS run_configs (
    run_id {big} PRIMARY KEY,
    config TEXT NOT NULL
);
-- Batch ids already stored: the database, not a process, makes a batch count once.
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    run_id {big} NOT NULL,
    count INTEGER NOT NULL,
    stored_at {big} NOT NULL
){without_rowid};
-- The loggers writing a run (an extension): see writer_tables.py.
CREATE TABLE IF NOT EXISTS run_writers (
    run_id {big} NOT NULL,
    writer TEXT NOT NULL,
    rank INTEGER,
    first_seen_at {big} NOT NULL,
    last_seen_at {big} NOT NULL,
    closed_at {big},
    outcome TEXT,
    PRIMARY KEY (run_id, writer)
);
-- Runs that `mlbench-metrics db copy` brought here: (source database, its run id) -> our run.
CREATE TABLE IF NOT EXISTS copied_runs (
    source TEXT NOT NULL,
    source_run_id {big} NOT NULL,
    run_id {big} NOT NULL,
    PRIMARY KEY (source, source_run_id)
);
-- Facts about this database: its id (a copy's source names it) and the like.
CREATE TABLE IF NOT EXISTS database_facts (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_WORDS: Final = {
    "sqlite": {
        "big": "INTEGER",
        "bytewise": "",  # SQLite compares text byte by byte already
        "data": "TEXT",  # a blob (binary body), JSON text (older databases) or '' (see chunk_tables.py)
        "blob": "BLOB",
        "double": "REAL",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "pod_id": "INTEGER PRIMARY KEY",
        "without_rowid": " WITHOUT ROWID",
    },
    "postgresql": {
        "big": "BIGINT",
        "bytewise": ' COLLATE "C"',
        "data": "BYTEA",  # a binary body or empty: PostgreSQL databases never held JSON chunks
        "blob": "BYTEA",
        "double": "DOUBLE PRECISION",
        "serial": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "pod_id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "without_rowid": "",
    },
}

_EXTRA: Final = {
    "sqlite": [],
    # Arrival ids: taken under the owner's row lock (see postgres_db.py).
    "postgresql": ["CREATE SEQUENCE IF NOT EXISTS chunk_ids"],
}


def schema_statements(kind: str) -> list[str]:
    """The statements that create every table of a ``kind`` (sqlite, postgresql) database."""
    text = _DDL.format(**_WORDS[kind])
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    statements = [s.strip() for s in "\n".join(lines).split(";")]
    return [s for s in statements if s] + _EXTRA[kind]


def ensure_schema(conn: Connection, kind: str) -> int:
    """Create or migrate the tables, inside the caller's write transaction; the version found.

    Returns:
        The version the database had (0 for an empty one, 1 for one written before versions).

    Raises:
        SchemaError: the database is newer than this code.
    """
    if kind == "postgresql":
        conn.execute("SELECT pg_advisory_xact_lock(?)", (_ADVISORY_KEY,))
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    found = int(row[0]) if row and row[0] is not None else None
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaError(
            f"the database's schema is version {found}, newer than this mlbench-metrics knows "
            f"({SCHEMA_VERSION}): it was written by a newer release; upgrade mlbench-metrics to use it"
        )
    if found is None:
        had_runs = _has_runs(conn, kind)
        for statement in schema_statements(kind):  # creates what a version-1 file lacks, or everything
            conn.execute(statement)
        _add_columns(conn, kind)
        conn.execute(_COUNT_SERIES)  # a version-1 file's chunks counted (nothing, for a new database)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
        return 1 if had_runs else 0
    if found < SCHEMA_VERSION:
        for statement in schema_statements(kind):  # new tables, in this engine's words
            conn.execute(statement)
        _add_columns(conn, kind)
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS.get(version, []):
                conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
    return found


# Columns added to a table after it first shipped: (table, column, DDL word); a table
# made by an older release gets them, whatever its version says (files from before versions).
_ADDED_COLUMNS: Final = (
    ("series_stats", "last_value", "TEXT"),
    ("series_stats", "min_value", "{double}"),
    ("series_stats", "max_value", "{double}"),
)


def _add_columns(conn: Connection, kind: str) -> None:
    for table, column, word in _ADDED_COLUMNS:
        if kind == "sqlite":
            found = any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})").fetchall())
        else:
            found = (
                conn.execute(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = ? AND column_name = ?",
                    (table, column),
                ).fetchone()
                is not None
            )
        if not found:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {word.format(**_WORDS[kind])}")


def _has_runs(conn: Connection, kind: str) -> bool:
    if kind == "sqlite":
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'"
    else:
        query = "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'runs'"
    return conn.execute(query).fetchone() is not None
