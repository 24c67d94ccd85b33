"""SQLite behind :class:`~.database.Database`: one file in WAL mode, the default with no setup.

Writes go through one connection guarded by a lock, so they are serialised in Python
rather than by SQLite's busy handler (which sleeps and retries); reads take a
connection from a small pool and, thanks to WAL, never wait for a writer.
``synchronous=NORMAL``: a commit survives the server process dying (the WAL is in the
OS's hands); only a power cut can lose the last commits.

Errors: ``sqlite3.OperationalError`` (a full disk, a read-only file, a lock held too
long) becomes :class:`~.database.StoreUnavailable` with a message saying which; other
``sqlite3`` errors become :class:`~.database.StoreError`. No threads are started here.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any, Final, NoReturn

from .database import Connection, StoreError, StoreUnavailable, ValueRefused

__all__ = ["SQLiteDatabase"]

# The newest body's id, the newest id of an owner, and whether a run has the owner's id:
# one statement, as a single POST's whole work is two.
_NEXT_IDS: Final = (
    "SELECT (SELECT MAX(id) FROM chunk_bodies), (SELECT MAX(id) FROM chunks WHERE owner = ?), "
    "EXISTS (SELECT 1 FROM runs WHERE id = ?)"
)


def _raise_mapped(exc: sqlite3.Error) -> NoReturn:
    """Raise the store's error for a ``sqlite3`` one (see the module)."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        if "full" in text:
            message = "the disk holding the database is full; writes fail until space is freed"
        elif "readonly" in text or "read-only" in text:
            message = f"the database cannot be written ({text}); check the file's permissions and filesystem"
        else:
            message = f"the database is busy ({text}); try again"
        raise StoreUnavailable(message) from exc
    if isinstance(exc, sqlite3.DataError):
        raise ValueRefused(f"the database cannot store this value: {text}") from exc
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in text:
        raise StoreUnavailable("the store is closed") from exc
    raise StoreError(f"the database failed: {text}") from exc


class SQLiteDatabase:
    """One SQLite file (see the module).

    Args:
        path: the database file; created when missing.

    Raises:
        StoreError: the file cannot be opened as a database.
    """

    kind: Final[str] = "sqlite"
    empty_data: Final[str] = ""  # '' is text, so that ``data = ''`` finds it (a blob never equals text)
    shared: Final[bool] = False
    _MAX_IDLE_READERS: Final = 8

    def __init__(self, path: str) -> None:
        self.path = path
        self.location = path
        self._write_lock = threading.Lock()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        try:
            self._writer = self._connect()
            self._writer.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            _raise_mapped(exc)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-32000")
        conn.execute("PRAGMA temp_store=MEMORY")
        return conn

    def close(self) -> None:
        """Close every connection; idempotent."""
        with self._write_lock, self._readers_lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._writer.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A pooled connection for reads."""
        with self._readers_lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            conn = self._readers.pop() if self._readers else None
        try:
            if conn is None:
                conn = self._connect()
            yield conn
        except sqlite3.Error as exc:
            _raise_mapped(exc)
        finally:
            if conn is not None:
                with self._readers_lock:
                    if self._closed or len(self._readers) >= self._MAX_IDLE_READERS:
                        conn.close()
                    else:
                        self._readers.append(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """The writer, inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on an exception)."""
        with self._write_lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            conn = self._writer
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                _raise_mapped(exc)

    def take_ids(self, conn: Connection, owner: int, count: int, *, of_run: bool, floor: int) -> list[int] | None:
        """Ids past the newest body's, the owner's newest and ``floor``, under SQLite's write lock."""
        body_max, own_max, run_exists = conn.execute(_NEXT_IDS, (owner, owner)).fetchone()
        if of_run and not run_exists:
            return None
        first = max(floor, (body_max or 0) + 1, (own_max or 0) + 1)
        return list(range(first, first + count))

    def insert_id(self, conn: Connection, sql: str, params: Sequence[Any]) -> int:
        """Run the ``INSERT``; its row's id (``lastrowid``: no ``RETURNING`` before SQLite 3.35)."""
        cursor: Any = conn.execute(sql, params)
        return int(cursor.lastrowid)

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless a query answers."""
        with self.read() as conn:
            conn.execute("SELECT 1").fetchone()
