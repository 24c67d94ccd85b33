"""The seam between the store's SQL and a database engine: SQLite or PostgreSQL.

:class:`~.store.Store` is one SQL implementation, written once with ``?`` placeholders and
SQL both engines speak (``ON CONFLICT``, ``IN``, ``EXISTS``, ``COALESCE``). What differs
is behind :class:`Database`, which has two implementations, :class:`.sqlite_db.SQLiteDatabase`
and :class:`.postgres_db.PostgresDatabase`:

* connections and transactions: SQLite serialises writes on one connection in Python and
  reads from a small pool (WAL); PostgreSQL takes every connection from a bounded pool;
* arrival ids (:meth:`Database.take_ids`): SQLite counts past the newest under its
  file lock; PostgreSQL takes a sequence's values while it holds the owner's row lock,
  so several processes never collide and ids grow in commit order within a run;
* the few words of DDL that differ (:mod:`.schema`) and the empty inline body;
* errors: a driver's exceptions never leave a database; they become the store's own
  (below), which the routes turn into answers (503 with ``Retry-After``, 400, 500).

Errors::

    StoreError
      +-- StoreUnavailable   the database cannot answer now (down, busy, full disk, pool exhausted): retry
      +-- ValueRefused       the database cannot hold this value (a NUL in text on PostgreSQL): a 400
      +-- SchemaError        the database's schema is newer than this code, or cannot be migrated
    RunNotFound, DuplicateBatch (in :mod:`.store`): what a write found, not a failure

No threads are started here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, Union

__all__ = [
    "Connection",
    "Cursor",
    "Database",
    "SchemaError",
    "StoreError",
    "StoreUnavailable",
    "ValueRefused",
    "is_database_url",
    "open_database",
]


class StoreError(Exception):
    """A database failed in a way that is not a plain answer (see the module's tree)."""


class StoreUnavailable(StoreError):
    """The database cannot answer now; the request may be tried again later.

    Attributes:
        retry_after: seconds a client should wait before trying again.
    """

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ValueRefused(StoreError, ValueError):
    """The database cannot store a value as given (the request is wrong for this engine)."""


class SchemaError(StoreError):
    """The database's schema is one this code cannot use (newer, or not ours)."""


class Cursor(Protocol):
    """What a statement returns: rows to fetch or iterate, and how many rows it changed."""

    @property
    def rowcount(self) -> int:
        """Rows the statement changed (-1 when unknown)."""

    def fetchone(self) -> Any:
        """The next row, or None."""

    def fetchall(self) -> list[Any]:
        """Every remaining row."""

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows."""


class Connection(Protocol):
    """A connection that runs SQL written with ``?`` placeholders."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        """Run one statement."""

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> object:
        """Run one statement once per row of parameters."""


class Database(Protocol):
    """Connections, transactions, ids and errors of one engine (see the module).

    Attributes:
        kind: ``"sqlite"`` or ``"postgresql"``.
        location: the file, or the URL without its password: what to tell the user.
        empty_data: what a chunk's ``data`` holds when its body is in ``chunk_bodies``.
        shared: several processes may serve this database at once (``--workers``).
    """

    @property
    def kind(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""

    @property
    def location(self) -> str:
        """The file, or the URL without its password."""

    @property
    def empty_data(self) -> Union[str, bytes]:
        """What a chunk's ``data`` holds when its body is in ``chunk_bodies``."""

    @property
    def shared(self) -> bool:
        """Several processes may serve this database at once."""

    def read(self) -> AbstractContextManager[Connection]:
        """A connection for reads (raises :class:`StoreError` subclasses, never the driver's)."""

    def transaction(self) -> AbstractContextManager[Connection]:
        """A connection inside a write transaction: committed at the end, rolled back on an exception."""

    def take_ids(self, conn: Connection, owner: int, count: int, *, of_run: bool, floor: int) -> list[int] | None:
        """``count`` new arrival ids for ``owner``'s chunks, inside the caller's transaction.

        Ids are unique among chunk bodies and within an owner and grow in commit order
        within an owner. None when ``of_run`` and no run has the id ``owner``.
        ``floor`` is the lowest id this process would take (SQLite keeps one).
        """

    def insert_id(self, conn: Connection, sql: str, params: Sequence[Any]) -> int:
        """Run an ``INSERT`` into a table whose ``id`` the database assigns; the new row's id."""

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers a query now."""

    def close(self) -> None:
        """Close every connection; idempotent."""


def is_database_url(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``) rather than a file."""
    return target.startswith(("postgresql://", "postgres://"))


def open_database(target: str, *, pool_size: int | None = None, pool_timeout: float | None = None) -> Database:
    """The database at ``target``: a PostgreSQL URL, else a SQLite file (created when missing).

    Args:
        target: ``postgresql://USER@HOST:PORT/DB`` or a file path.
        pool_size: PostgreSQL: connections this process may open at most.
        pool_timeout: PostgreSQL: seconds a request waits for a free connection before
            it is answered 503.

    Raises:
        StoreError: the database cannot be opened (a clear message, never the driver's error).
    """
    if is_database_url(target):
        from .postgres_db import PostgresDatabase

        return PostgresDatabase(target, pool_size=pool_size, pool_timeout=pool_timeout)
    from .sqlite_db import SQLiteDatabase

    return SQLiteDatabase(target)
