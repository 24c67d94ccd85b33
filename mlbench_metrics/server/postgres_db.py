"""PostgreSQL behind :class:`~.database.Database` (psycopg 3, the ``[postgres]`` extra).

For a team: several server processes (``serve --workers N``) and several machines share
one database, and the database, not a process, keeps every fact. So:

* every connection comes from a bounded pool (``pool_size`` per process); when all are
  busy a request waits ``pool_timeout`` seconds, then is answered 503 with
  ``Retry-After`` rather than hanging, and clients retry or spool;
* connections are opened on demand in the requesting thread (no pool threads); when
  one fails because the server went away, the idle ones are dropped too, since they went
  with it, so a restart of PostgreSQL costs each process one 503, not one per connection;
* arrival ids come from a sequence, taken while the transaction holds the owner's row
  (``SELECT ... FOR UPDATE``): two processes writing to one run take turns for the
  moment of the insert, so ids grow in commit order within a run (live charts ask for
  "what arrived after id N" and miss nothing), and are unique everywhere;
* SQL is written with ``?`` (as for SQLite) and turned into psycopg's ``%s`` once per text.

Errors: the pool running dry and ``psycopg.OperationalError`` (the server down or
restarting, a deadlock, a serialization failure) become :class:`~.database.StoreUnavailable`;
text PostgreSQL cannot hold (a NUL character, a lone surrogate) becomes
:class:`~.database.ValueRefused`; any other ``psycopg.Error`` a :class:`~.database.StoreError`.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit, urlunsplit

from .database import Connection, Cursor, StoreError, StoreUnavailable, ValueRefused

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

__all__ = ["DEFAULT_POOL_SIZE", "DEFAULT_POOL_TIMEOUT", "PostgresDatabase", "redact"]

DEFAULT_POOL_SIZE: Final = 8
"""Connections one server process opens at most."""

DEFAULT_POOL_TIMEOUT: Final = 5.0
"""Seconds a request waits for a free connection before it is answered 503."""

_CONNECT_TIMEOUT: Final = 5
_MAX_PARAMS: Final = 30_000  # PostgreSQL takes at most 65,535 parameters a statement
_VALUES: Final = re.compile(r"\s+VALUES\s*\(\s*\?(?:\s*,\s*\?)*\s*\)")
_STATEMENT_TIMEOUT_MS: Final = 60_000
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)
_NETLOC_PASSWORD: Final = re.compile(r"^([^:/]+://[^:/@]*:)[^@/]*@")


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redact(url: str) -> str:
    """``url`` without its password, to print or log: the one after the user name and
    libpq's ``?password=`` parameter (which libpq takes as well)."""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL urlsplit reads (a bad port, a broken IPv6 address)
        return _NETLOC_PASSWORD.sub(r"\1***@", url)
    if password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class _PgConnection:
    """A psycopg connection that takes ``?`` placeholders (see :class:`~.database.Connection`)."""

    __slots__ = ("raw",)

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        """Run one statement; results in binary (bytea arrives as bytes, not as hex text to decode)."""
        cursor: Cursor = self.raw.execute(_pg(sql), params, binary=True)
        return cursor

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> object:
        """Run one statement per row of parameters.

        An ``INSERT ... VALUES (?, ...)`` becomes one statement of many rows (a round trip
        for up to thousands of rows, where psycopg's pipeline syncs each); others run row by row.
        """
        rows = [tuple(row) for row in params]
        match = _VALUES.search(sql)
        if match is None or not rows:
            with self.raw.cursor() as cursor:
                cursor.executemany(_pg(sql), rows)
            return None
        width = len(rows[0])
        group = "(" + ", ".join(["%s"] * width) + ")"
        step = max(1, _MAX_PARAMS // width)
        head, tail = _pg(sql[: match.start()]), _pg(sql[match.end() :])
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            flat = [value for row in part for value in row]
            self.raw.execute(f"{head} VALUES {', '.join([group] * len(part))}{tail}", flat)
        return None


class PostgresDatabase:
    """A PostgreSQL database (see the module).

    Args:
        url: ``postgresql://USER[:PASSWORD]@HOST:PORT/DB`` (libpq's environment, such
            as ``PGPASSWORD``, fills what it leaves out).
        pool_size: connections this process opens at most.
        pool_timeout: seconds a request waits for a free connection.

    Raises:
        StoreError: psycopg is not installed, or the database cannot be reached.
    """

    kind: Final[str] = "postgresql"
    empty_data: Final[bytes] = b""
    shared: Final[bool] = True

    def __init__(self, url: str, *, pool_size: int | None = None, pool_timeout: float | None = None) -> None:
        if psycopg is None:
            raise StoreError("a postgresql:// database needs psycopg: pip install 'mlbench-metrics[postgres]'")
        self.url = url
        self.location = redact(url)
        self.pool_size = pool_size or DEFAULT_POOL_SIZE
        self.pool_timeout = DEFAULT_POOL_TIMEOUT if pool_timeout is None else pool_timeout
        self._slots = threading.BoundedSemaphore(self.pool_size)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            first = self._connect()
        except (psycopg.Error, ValueError) as exc:  # ValueError: a URL libpq cannot parse
            why = _first_line(exc).replace(url, self.location)  # libpq quotes a URL it cannot parse, password too
            raise StoreError(f"cannot connect to the database {self.location}: {why}") from None
        self._idle.append(first)

    def _connect(self) -> Any:
        params: dict[str, Any] = conninfo_to_dict(self.url)  # the URL's own options (a search_path, say) are kept
        params["options"] = f"{params.get('options', '')} -c statement_timeout={_STATEMENT_TIMEOUT_MS}".strip()
        params.setdefault("connect_timeout", _CONNECT_TIMEOUT)
        params.setdefault("application_name", "mlbench-metrics")
        return psycopg.connect(autocommit=True, **params)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back. Idempotent."""
        with self._lock:
            self._closed = True
        self._drop_idle()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if not self._slots.acquire(timeout=self.pool_timeout):
            raise StoreUnavailable(
                f"all {self.pool_size} connections of this server process to the database are busy; try again"
            )
        raw = None
        try:
            with self._lock:
                if self._closed:
                    raise StoreUnavailable("the store is closed")
                raw = self._idle.pop() if self._idle else None
            try:
                if raw is None:
                    raw = self._connect()
                yield raw
            except (psycopg.Error, UnicodeEncodeError) as exc:
                if isinstance(exc, psycopg.OperationalError) and raw is not None and raw.closed:
                    self._drop_idle()  # the server went away: the idle connections went with it
                _raise_mapped(exc, self.location)
        finally:
            if raw is not None:
                with self._lock:
                    keep = not self._closed and not raw.closed and not raw.broken
                    if keep:
                        self._idle.append(raw)
                if not keep:
                    with contextlib.suppress(Exception):
                        raw.close()
            self._slots.release()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for raw in idle:
            with contextlib.suppress(Exception):
                raw.close()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A pooled connection (autocommit: each read sees what was committed before it)."""
        with self._connection() as raw:
            yield _PgConnection(raw)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A pooled connection inside a transaction, committed at the end."""
        with self._connection() as raw, raw.transaction():
            yield _PgConnection(raw)

    def take_ids(self, conn: Connection, owner: int, count: int, *, of_run: bool, floor: int) -> list[int] | None:
        """Lock the owner's row, then take ``count`` values of the ``chunk_ids`` sequence."""
        table = "runs" if owner > 0 else "pods"
        # One statement: the row is locked (FOR UPDATE, in the subquery) before the ids are taken.
        rows = conn.execute(
            f"SELECT nextval('chunk_ids') FROM (SELECT id FROM {table} WHERE id = ? FOR UPDATE) AS owner_row, "
            "generate_series(1, ?) ORDER BY 1",
            (abs(owner), count),
        ).fetchall()
        if rows:
            return [int(r[0]) for r in rows]
        if of_run:
            return None
        return [int(r[0]) for r in conn.execute("SELECT nextval('chunk_ids') FROM generate_series(1, ?)", (count,))]

    def insert_id(self, conn: Connection, sql: str, params: Sequence[Any]) -> int:
        """Run the ``INSERT`` with ``RETURNING id``; the new row's id."""
        return int(conn.execute(sql + " RETURNING id", params).fetchone()[0])

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless a query answers."""
        with self.read() as conn:
            conn.execute("SELECT 1").fetchone()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _raise_mapped(exc: BaseException, location: str) -> NoReturn:
    """Raise the store's error for a psycopg (or encoding) one (see the module)."""
    if isinstance(exc, (UnicodeEncodeError, psycopg.DataError)):
        raise ValueRefused(f"PostgreSQL cannot store this text: {_first_line(exc)}") from exc
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
        raise StoreUnavailable(f"the database {location} cannot answer now ({_first_line(exc)}); try again") from exc
    raise StoreError(f"the database failed: {_first_line(exc)}") from exc
