"""The server's storage: runs, pods and metrics, in SQL both SQLite and PostgreSQL run.

One implementation, :class:`Store`, over a :class:`~.database.Database` that owns the
engine's connections, transactions, arrival ids and errors (:mod:`.sqlite_db`, the
default with no setup; :mod:`.postgres_db`, for a team). The tables and their version are
:mod:`.schema`'s. Methods raise :class:`RunNotFound` and :class:`DuplicateBatch` for what
a write found, and the :mod:`.database` errors (:class:`StoreUnavailable`, ...) when the
database fails; never a driver's exception. Dates are stored as integer microseconds
since the epoch (UTC), so ``since`` and ordering are integer comparisons and every
output format is derived from one value.

Metrics are stored as *chunks*: one per (batch, metric name) holding that series' points
of the batch (their tables: :mod:`.chunk_tables`; their format: :mod:`.chunks`). A row
per point cost ~4.5 us in SQLite on the 2-core machines we measure on, capping the batch
endpoint near 125,000 metrics/s end to end; a batch of 1,000 points over 10 names becomes
10 chunks. Reads decode the chunks of a series and order its points by (date, arrival).

No threads are started here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any, Union

from . import chunk_tables
from .chunk_tables import CHUNK_ROWS, delete_chunks, insert_chunks, newest_id, read_chunks, series_pieces
from .chunks import Columns, Point, decode_chunk, decode_points, encode_chunks, encode_point
from .columns import ChunkCache, SeriesColumns, merge_columns
from .database import (
    Connection,
    Database,
    SchemaError,
    StoreError,
    StoreUnavailable,
    ValueRefused,
    open_database,
)
from .schema import ensure_schema
from .summaries import SummaryMethods
from .writer_tables import LIVENESS_COLUMNS, WriterMethods

__all__ = [
    "Columns",
    "DuplicateBatch",
    "Point",
    "RunNotFound",
    "SchemaError",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "ValueRefused",
]

_RUN_KEYS = (
    "id, name, created_at, finished_at, state, job_id, job_metadata, num_workers, cpu_limit, "
    "image, command, backend, run_on_all_nodes, gpu_enabled, light_target"
)
_RUN_COLUMNS = f"{_RUN_KEYS}, {LIVENESS_COLUMNS}"  # see writer_tables: started_at, last_seen_at, open_seen_at


class RunNotFound(LookupError):
    """The run does not exist (or was deleted)."""


class DuplicateBatch(Exception):
    """A batch with this id was stored before; nothing was written."""


def _run_dict(row: Sequence[Any]) -> dict[str, Any]:
    keys = [c.strip() for c in _RUN_KEYS.split(",")] + ["started_at", "last_seen_at", "open_seen_at"]
    run = dict(zip(keys, row))
    run["job_metadata"] = json.loads(run["job_metadata"] or "{}")
    for flag in ("run_on_all_nodes", "gpu_enabled", "light_target"):
        run[flag] = bool(run[flag])
    return run


class Store(WriterMethods, SummaryMethods):
    """Runs, pods, metrics and a run's writers in one database.

    Args:
        target: a SQLite file (created with its schema when missing), a
            ``postgresql://`` URL, or an open :class:`~.database.Database`.

    Attributes:
        db: the database.
        path: where the data is, to show (a file, or the URL without its password).
        schema_found: the schema version the database had when opened (0: it was empty).

    Raises:
        StoreError: the database cannot be opened, or its schema is newer than this code.
    """

    def __init__(self, target: Union[str, Database]) -> None:
        self.db = open_database(target) if isinstance(target, str) else target
        self.path = self.db.location
        try:
            with self.db.transaction() as conn:
                self.schema_found = ensure_schema(conn, self.db.kind)
                self._next_id = newest_id(conn) + 1 if self.db.kind == "sqlite" else 0
            with self.db.transaction() as conn:  # once, for series stored before their values were summarised
                chunk_tables.fill_values(conn)
        except BaseException:
            self.db.close()
            raise
        self._chunk_cache = ChunkCache()  # decoded chunks for charts (series_columns)

    def close(self) -> None:
        """Close every connection; idempotent."""
        self.db.close()

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers now (readiness)."""
        self.db.ping()

    # -- connections -------------------------------------------------------------

    def _read(self) -> AbstractContextManager[Connection]:
        return self.db.read()

    def _transaction(self) -> AbstractContextManager[Connection]:
        return self.db.transaction()

    # -- runs --------------------------------------------------------------------

    def create_run(self, now_us: int, **fields: Any) -> dict[str, Any]:
        """Insert a run in state ``initialized`` and return it."""
        columns = ["created_at", *fields]
        values = [now_us, *(int(v) if isinstance(v, bool) else v for v in fields.values())]
        marks = ", ".join("?" for _ in columns)
        with self._transaction() as conn:
            run_id = self.db.insert_id(conn, f"INSERT INTO runs ({', '.join(columns)}) VALUES ({marks})", values)
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _run_dict(row)

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run, ordered by id."""
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY id").fetchall()
        return [_run_dict(r) for r in rows]

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        """The run, or None when there is none with that id."""
        with self._read() as conn:
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _run_dict(row)

    def delete_run(self, run_id: int) -> bool:
        """Delete the run with its metrics and batch ids; False when it did not exist."""
        with self._transaction() as conn:
            cur = conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            if cur.rowcount == 0:
                return False
            delete_chunks(conn, run_id)
            conn.execute("DELETE FROM batches WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM run_configs WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM run_writers WHERE run_id = ?", (run_id,))
            conn.execute("UPDATE pods SET run_id = NULL WHERE run_id = ?", (run_id,))
        return True

    def update_run(
        self,
        run_id: int,
        *,
        state: str | None = None,
        finished_at: int | None = None,
        clear_finished: bool = False,
        job_metadata: dict[str, Any] | None = None,
        job_id: str | None = None,
    ) -> dict[str, Any] | None:
        """Change a run's state, ``finished_at``, job id or job metadata; None if unknown."""
        sets: list[str] = []
        args: list[Any] = []
        if state is not None:
            sets.append("state = ?")
            args.append(state)
        if finished_at is not None:
            sets.append("finished_at = ?")
            args.append(finished_at)
        elif clear_finished:
            sets.append("finished_at = NULL")
        if job_metadata is not None:
            sets.append("job_metadata = ?")
            args.append(json.dumps(job_metadata))
        if job_id is not None:
            sets.append("job_id = ?")
            args.append(job_id)
        with self._transaction() as conn:
            if sets:
                conn.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*args, run_id))
            row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _run_dict(row)

    # -- pods --------------------------------------------------------------------

    def upsert_pod(self, name: str, labels: str, phase: str, ip: str, run_id: int | None) -> dict[str, Any]:
        """Create or update the pod called ``name``."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO pods (name, labels, phase, ip, run_id) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET labels = excluded.labels, phase = excluded.phase, "
                "ip = excluded.ip, run_id = excluded.run_id",
                (name, labels, phase, ip, run_id),
            )
        pod = self.get_pod(name)
        assert pod is not None
        return pod

    def list_pods(self, run_id: int | None = None) -> list[dict[str, Any]]:
        """Every pod (or the pods of one run), ordered by id."""
        query = "SELECT id, name, labels, phase, ip, run_id FROM pods"
        args: tuple[Any, ...] = ()
        if run_id is not None:
            query += " WHERE run_id = ?"
            args = (run_id,)
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [dict(zip(("id", "name", "labels", "phase", "ip", "run_id"), r)) for r in rows]

    def get_pod(self, name: str) -> dict[str, Any] | None:
        """The pod called ``name``, or None."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT id, name, labels, phase, ip, run_id FROM pods WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else dict(zip(("id", "name", "labels", "phase", "ip", "run_id"), row))

    # -- metrics -----------------------------------------------------------------

    def add_metric(self, *, run_id: int | None, pod_id: int | None, row: tuple[str, int, str, str, bool]) -> None:
        """Store one metric ``(name, date_us, value, metadata, cumulative)`` of a run or a pod.

        Raises:
            RunNotFound: the run does not exist.
        """
        name, date_us, value, metadata, cumulative = row
        owner = run_id if run_id is not None else -_require(pod_id)
        chunk = (name, date_us, date_us, 1, encode_point(date_us, value, metadata, cumulative))
        with self._transaction() as conn:
            next_id = insert_chunks(conn, self.db, owner, [chunk], self._next_id, of_run=run_id is not None)
            if next_id is None:
                raise RunNotFound(run_id)
            self._next_id = next_id

    def add_batch(self, run_id: int, batch_id: str | None, columns: Columns, count: int, now_us: int) -> None:
        """Store a batch of ``count`` metrics of one run in one transaction.

        Raises:
            RunNotFound: the run does not exist; nothing is stored.
            DuplicateBatch: ``batch_id`` was stored before; nothing is stored.
        """
        chunks = encode_chunks(columns)
        with self._transaction() as conn:
            if batch_id is not None:
                # The database decides: with several processes (or servers) a retried batch
                # may reach another one while the first is still storing it; this insert
                # then waits for that one's commit and finds its id.
                cur = conn.execute(
                    "INSERT INTO batches (batch_id, run_id, count, stored_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (batch_id) DO NOTHING",
                    (batch_id, run_id, count, now_us),
                )
                if cur.rowcount == 0:
                    raise DuplicateBatch(batch_id)
            next_id = insert_chunks(conn, self.db, run_id, chunks, self._next_id, of_run=True)
            if next_id is None:
                raise RunNotFound(run_id)  # the transaction rolls back: the batch id is not kept either
            self._next_id = next_id

    def series(
        self,
        *,
        run_id: int | None = None,
        pod_id: int | None = None,
        since_us: int | None = None,
        until_us: int | None = None,
        name: str | None = None,
    ) -> Iterator[tuple[str, list[Point]]]:
        """Each series of one run or pod as ``(name, points)``, by name; points by (date, arrival)."""
        if (run_id is None) == (pod_id is None):
            raise ValueError("give exactly one of run_id and pod_id")
        owner = run_id if run_id is not None else -_require(pod_id)
        where = ["owner = ?"]
        args: list[Any] = [owner]
        if since_us is not None:
            where.append("last_date >= ?")
            args.append(since_us)
        if until_us is not None:
            where.append("first_date <= ?")
            args.append(until_us)
        if name is not None:
            where.append("name = ?")
            args.append(name)
        query = (
            f"SELECT name, first_date, last_date, chunks.id, data, body FROM {CHUNK_ROWS} "
            f"WHERE {' AND '.join(where)} ORDER BY name, first_date, chunks.id"
        )
        with self._read() as conn:
            rows = conn.execute(query, args).fetchall()
        for series_name, group in groupby(rows, key=lambda r: r[0]):
            points = decode_points(list(group), since_us, until_us)
            if points:
                yield series_name, points

    def all_series(self, kind: str) -> Iterator[tuple[int, str, list[Point]]]:
        """Every series of every run (``kind="run"``) or pod (``"pod"``): ``(id, name, points)``."""
        condition = "owner > 0" if kind == "run" else "owner < 0"
        query = (
            f"SELECT owner, name, first_date, last_date, chunks.id, data, body FROM {CHUNK_ROWS} "
            f"WHERE {condition} ORDER BY owner, name, first_date, chunks.id"
        )
        with self._read() as conn:
            rows = conn.execute(query).fetchall()
        for (owner, series_name), group in groupby(rows, key=lambda r: (r[0], r[1])):
            points = decode_points([r[1:] for r in group], None, None)
            yield abs(owner), series_name, points

    def latest_value(self, run_id: int, name: str) -> str | None:
        """The newest value of metric ``name`` in run ``run_id``, or None."""
        for _, points in self.series(run_id=run_id, name=name):
            return points[-1][1]
        return None

    # -- reads for charts and the run page (extensions) ---------------------------

    def set_run_config(self, run_id: int, config_json: str) -> None:
        """Store (replace) a run's configuration, given as JSON text.

        Raises:
            RunNotFound: the run does not exist.
        """
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise RunNotFound(run_id)
            conn.execute(
                "INSERT INTO run_configs (run_id, config) VALUES (?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET config = excluded.config",
                (run_id, config_json),
            )

    def get_run_config(self, run_id: int) -> str | None:
        """A run's configuration as JSON text, or None when none was stored."""
        with self._read() as conn:
            row = conn.execute("SELECT config FROM run_configs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else str(row[0])

    def series_catalog(self, run_id: int) -> list[dict[str, Any]]:
        """A run's series without points, by name: count, first and last date, the newest point's
        cumulative flag and metadata, and the highest chunk id (``cursor``) of each."""
        query = (
            "SELECT name, SUM(count), MIN(first_date), MAX(last_date), MAX(id) FROM chunks "
            "WHERE owner = ? GROUP BY name ORDER BY name"
        )
        with self._read() as conn:
            rows = conn.execute(query, (run_id,)).fetchall()
            newest = {
                name: conn.execute(
                    f"SELECT data, body FROM {CHUNK_ROWS} WHERE owner = ? AND name = ? AND chunks.id = ?",
                    (run_id, name, last_id),
                ).fetchone()
                for name, _, _, _, last_id in rows
            }
        out = []
        for name, count, first, last, last_id in rows:
            chunk = decode_chunk(last_id, *newest[name])
            last_point = [len(chunk.dates) - 1]  # the writer sorts a chunk's points by date
            (metadata,), (cumulative,) = chunk.metadata(last_point), chunk.cumulative(last_point)
            out.append(
                {
                    "name": name,
                    "count": count,
                    "first_us": first,
                    "last_us": last,
                    "cumulative": cumulative,
                    "last_metadata": metadata,
                    "cursor": last_id,
                }
            )
        return out

    def run_stats(self) -> dict[int, tuple[int, int, int]]:
        """For each run with metrics: ``(series, points, last date in microseconds)``, from the
        counts kept per series (one row a series: 2,000 runs of 5 series, 1M chunks, in ms)."""
        query = (  # SUM of a BIGINT is a NUMERIC on PostgreSQL: cast back
            "SELECT owner, COUNT(*), CAST(SUM(points) AS BIGINT), MAX(last_date) FROM series_stats "
            "WHERE owner > 0 GROUP BY owner"
        )
        with self._read() as conn:
            return {owner: (series, points, last) for owner, series, points, last in conn.execute(query)}

    def series_columns(
        self,
        run_id: int,
        names: Sequence[str] | None = None,
        *,
        since_us: int | None = None,
        until_us: int | None = None,
        after_id: int = 0,
        through_id: int | None = None,
    ) -> list[SeriesColumns]:
        """A run's series as columns (see :mod:`.chunks`), by name.

        Args:
            run_id: the run.
            names: only these series (None: all).
            since_us, until_us: only points dated within (inclusive).
            after_id: only points that arrived after the chunk id a previous read
                returned as its ``cursor`` (for live updates: nothing arriving late is missed).
            through_id: only points that had arrived by that cursor (None: all), so that a
                first read and the reads after its cursor never overlap.
        """
        conditions = [("owner = ?", run_id), ("id > ?", after_id or None), ("id <= ?", through_id)]
        conditions += [("last_date >= ?", since_us), ("first_date <= ?", until_us)]
        where = [condition for condition, value in conditions if value is not None]
        args: list[Any] = [value for _, value in conditions if value is not None]
        if names is not None:
            if not names:
                return []
            where.append(f"name IN ({', '.join('?' for _ in names)})")
            args.extend(names)
        # Keys first: a chunk decoded before is not read again (its points are most of it).
        query = f"SELECT name, first_date, id FROM chunks WHERE {' AND '.join(where)}"
        with self._read() as conn:
            keys = conn.execute(query, args).fetchall()
            chunks = self._chunk_cache.lookup(run_id, (k[2] for k in keys))
            missing = [k[2] for k in keys if k[2] not in chunks]
            chunks.update(read_chunks(conn, run_id, missing, partial(self._chunk_cache.decode, run_id)))
        keys.sort(key=itemgetter(0, 1, 2))  # sorted here, so that SQLite may use either index
        out = []
        for name, group in groupby(keys, key=itemgetter(0)):
            columns = merge_columns(name, [chunks[k[2]] for k in group], since_us, until_us)
            if len(columns):
                out.append(columns)
        return out

    def series_pieces(
        self, run_id: int, names: Sequence[str] | None, dates: tuple[int | None, int | None] = (None, None)
    ) -> Iterator[SeriesColumns]:
        """A run's series (as :meth:`series_columns`, ``dates`` its since and until) in pieces of about
        50,000 points, read when asked for: exports stream (see :func:`.chunk_tables.series_pieces`)."""
        return series_pieces(self._read, run_id, names, dates)

    def count_metrics(self, run_id: int | None = None) -> int:
        """How many metrics are stored (for one run, or in all)."""
        where, args = ("", ()) if run_id is None else (" WHERE owner = ?", (run_id,))
        with self._read() as conn:
            return int(conn.execute("SELECT COALESCE(SUM(count), 0) FROM chunks" + where, args).fetchone()[0])


def _require(value: int | None) -> int:
    if value is None:
        raise ValueError("an owner id is required")
    return value
