"""A run's writers: the loggers that announced themselves, when each was last heard, and how it ended.

A writer is one logger (one process, one rank) sending a run's metrics to this server.
It says it is alive with each batch and, when idle, with a tiny heartbeat, and says at
``close()`` whether it ended cleanly or failed. Its row drives the run's state, in one
transaction with the report (so several server processes on one database agree, with
nothing kept in memory):

* the first report makes an ``initialized`` run ``started``; so does a new writer a
  ``finished`` one (a rank that started late, a resumed run), but not a ``failed`` one:
  a failure stays visible until someone marks the run (``PATCH``);
* a writer that closes failed makes the run ``failed``;
* the last open writer closing cleanly makes a run that is ``started`` (or
  ``initialized``) ``finished``;
* a run with a job (``serve --exec`` runs its processes; the dashboard, Kubernetes jobs)
  keeps the state its job gives it: the job sees every process's exit code;
* ``crashed`` is never stored: a reader derives it from the oldest ``last_seen_at`` of the
  open writers (:data:`LIVENESS_COLUMNS`), so a late report turns it back to ``started``.

The SQL is plain (no SQLite-only syntax) so that both databases run it as it is; the
table's DDL (``run_writers``) is :mod:`.schema`'s. The
functions run on a connection the caller owns, inside the caller's transaction. No
threads are started here.
"""

from __future__ import annotations

from typing import Any, ContextManager, Final, Optional, Protocol, Sequence, Tuple

__all__ = [
    "LIVENESS_COLUMNS",
    "WRITER_KEYS",
    "WRITER_STATES",
    "WriterRow",
    "report_writer",
    "writer_rows",
]

LIVENESS_COLUMNS: Final = (
    "(SELECT MIN(w.first_seen_at) FROM run_writers w WHERE w.run_id = runs.id), "
    "(SELECT MAX(w.last_seen_at) FROM run_writers w WHERE w.run_id = runs.id), "
    "(SELECT MIN(w.last_seen_at) FROM run_writers w WHERE w.run_id = runs.id AND w.closed_at IS NULL)"
)
"""Three columns for a ``SELECT ... FROM runs``: when the first writer appeared
(``started_at``), when one was last heard (``last_seen_at``), and the oldest last report
of the writers still open (``open_seen_at``: older than the timeout means ``crashed``)."""

WRITER_STATES: Final = ("open", "closed", "failed")
"""What a writer reports: alive, ended cleanly, or ended with an error (or SIGTERM)."""

WRITER_KEYS: Final = ("writer", "rank", "first_seen_at", "last_seen_at", "closed_at", "outcome")
"""The fields of a :data:`WriterRow`, in order."""

WriterRow = Tuple[str, Optional[int], int, int, Optional[int], Optional[str]]
"""One writer: ``(writer, rank, first_seen_at, last_seen_at, closed_at, outcome)``."""


class Connection(Protocol):
    """The part of a DB-API connection used here (sqlite3's, or a wrapper with ``?`` marks)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any:
        """Run one statement; the result has ``fetchone()`` and ``fetchall()``."""


def report_writer(
    conn: Connection, run_id: int, writer: str, rank: int | None, state: str, now_us: int
) -> list[WriterRow] | None:
    """Record that ``writer`` of run ``run_id`` reports ``state`` (one of :data:`WRITER_STATES`)
    at ``now_us``, and move the run's state as the module says.

    Returns:
        Every writer of the run, oldest first; None when there is no such run.
    """
    found = conn.execute("SELECT state, job_id FROM runs WHERE id = ?", (run_id,)).fetchone()
    if found is None:
        return None
    run_state, job = found
    known = conn.execute(
        "SELECT closed_at FROM run_writers WHERE run_id = ? AND writer = ?", (run_id, writer)
    ).fetchone()
    closing = state != "open"
    if known is None:
        conn.execute(
            "INSERT INTO run_writers (run_id, writer, rank, first_seen_at, last_seen_at, closed_at, outcome) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, writer, rank, now_us, now_us, now_us if closing else None, state if closing else None),
        )
    elif closing and known[0] is None:
        conn.execute(
            "UPDATE run_writers SET last_seen_at = ?, closed_at = ?, outcome = ? WHERE run_id = ? AND writer = ?",
            (now_us, now_us, state, run_id, writer),
        )
    else:  # alive again, or a repeated close: only the time changes
        conn.execute(
            "UPDATE run_writers SET last_seen_at = ? WHERE run_id = ? AND writer = ?", (now_us, run_id, writer)
        )
    new_state = None if job else _next_state(conn, run_id, run_state, new_writer=known is None, state=state)
    if new_state == "started" and new_state != run_state:
        conn.execute("UPDATE runs SET state = 'started', finished_at = NULL WHERE id = ?", (run_id,))
    elif new_state is not None and new_state != run_state:
        conn.execute("UPDATE runs SET state = ?, finished_at = ? WHERE id = ?", (new_state, now_us, run_id))
    return writer_rows(conn, run_id)


def writer_rows(conn: Connection, run_id: int) -> list[WriterRow]:
    """Every writer of the run, oldest first."""
    rows = conn.execute(
        "SELECT writer, rank, first_seen_at, last_seen_at, closed_at, outcome FROM run_writers "
        "WHERE run_id = ? ORDER BY first_seen_at, writer",
        (run_id,),
    ).fetchall()
    return [tuple(r) for r in rows]


def _next_state(conn: Connection, run_id: int, run_state: str, *, new_writer: bool, state: str) -> str | None:
    """The run's state after the report (None: unchanged)."""
    if state == "failed":
        return "failed"
    if state == "open":
        if run_state == "initialized" or (new_writer and run_state == "finished"):
            return "started"
        return None  # a failure stays visible until someone marks the run again
    if run_state not in ("started", "initialized"):
        return None  # marked finished or failed already: a clean close changes nothing
    still_open = conn.execute(
        "SELECT COUNT(*) FROM run_writers WHERE run_id = ? AND closed_at IS NULL", (run_id,)
    ).fetchone()[0]
    return "finished" if not still_open else ("started" if run_state == "initialized" else None)


class WriterMethods:
    """The store's methods for writers, mixed into :class:`~.store.Store` (which owns the
    connections): kept here beside their SQL so that the store's module stays readable."""

    def _transaction(self) -> ContextManager[Connection]:
        raise NotImplementedError

    def _read(self) -> ContextManager[Connection]:
        raise NotImplementedError

    def report_writer(
        self, run_id: int, writer: str, rank: int | None, state: str, now_us: int
    ) -> list[WriterRow] | None:
        """A writer reports ``open`` (alive), ``closed`` or ``failed`` and the run's state follows,
        in one transaction (see the module). Returns the run's writers, oldest first; None
        when there is no such run."""
        with self._transaction() as conn:
            return report_writer(conn, run_id, writer, rank, state, now_us)

    def run_writers(self, run_id: int) -> list[WriterRow]:
        """A run's writers, oldest first."""
        with self._read() as conn:
            return writer_rows(conn, run_id)
