"""``mlbench-metrics db copy SQLITE_FILE postgresql://...``: a laptop's runs onto a team's server.

Each run is copied in one transaction of the target: the run (a new id there), its
configuration, its chunks (in arrival order, with the target's arrival ids), its batch
ids (so a client still retrying a batch to the team server does not store it twice),
and a row of ``copied_runs`` that says "run N of database D is run M here". That row
commits with the data or not at all, so a copy interrupted at any point (Ctrl-C, a kill,
the network) and run again copies each run exactly once: what committed is skipped,
what did not is copied whole. Two copies of one file at once also agree, as the
second one's ``copied_runs`` row waits for the first's and finds it.

A database is named by an id kept in its ``database_facts`` table (made on first use), so
a file copied or moved elsewhere is still the same source. Pods and their metrics are
copied the same way (``copied_runs`` keeps them under minus the pod's id); a pod whose
name the target already has gets the copied metrics added to it.

A run whose rows the source cannot read (a damaged file: "database disk image is
malformed") is left out, said, and counted in :attr:`CopyReport.unreadable`; the copy goes
on with the others, since running it again meets the same damage, and would otherwise
never reach the runs after it.

Chunks in the JSON text format of old SQLite files are re-encoded in the binary one:
a PostgreSQL database only ever holds binary chunks.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .chunk_tables import CHUNK_ROWS, insert_chunks
from .chunks import EncodedChunk, TextChunk, encode_chunks
from .database import Connection, StoreError
from .store import Store

__all__ = ["CopyReport", "SourceUnreadable", "copy_database", "database_id"]

_RUN_FIELDS: Final = (
    "name",
    "created_at",
    "finished_at",
    "state",
    "job_id",
    "job_metadata",
    "num_workers",
    "cpu_limit",
    "image",
    "command",
    "backend",
    "run_on_all_nodes",
    "gpu_enabled",
    "light_target",
)
_CHUNKS_PER_INSERT: Final = 500
_STILL_GOING: Final = "still {}: points it records from now on are not copied, not even by running the copy again"


@dataclass
class CopyReport:
    """What a copy did: runs and pods copied now or found copied before, and points copied."""

    copied: int = 0
    already: int = 0
    points: int = 0
    unreadable: list[str] = field(default_factory=list)
    """Runs and pods (``"run 3 (name)"``) left out: the source cannot read them."""


class SourceUnreadable(Exception):
    """The source cannot read one run's or pod's rows (the target's transaction is rolled back)."""


class _AlreadyCopied(Exception):
    pass


def database_id(store: Store) -> str:
    """The id of ``store``'s database (made and kept on first use)."""
    with store.db.transaction() as conn:
        conn.execute(
            "INSERT INTO database_facts (key, value) VALUES ('id', ?) ON CONFLICT (key) DO NOTHING",
            (str(uuid.uuid4()),),
        )
        return str(conn.execute("SELECT value FROM database_facts WHERE key = 'id'").fetchone()[0])


def copy_database(source: Store, target: Store, progress: Callable[[str], None] | None = None) -> CopyReport:
    """Copy every run and pod of ``source`` not yet copied into ``target`` (see the module).

    Raises:
        ValueError: ``source`` and ``target`` are one database.
        StoreError: either database failed; what committed before stays, and a rerun resumes.
    """
    say = progress or (lambda _: None)
    source_id = database_id(source)
    if source_id == database_id(target):
        raise ValueError("the source and the target are the same database")
    report = CopyReport()
    run_ids = {}
    for run in source.list_runs():
        what = f"run {run['id']} ({run['name']})"
        new_id = _copy_or_say(source, target, source_id, run["id"], run, report, what, say)
        run_ids[run["id"]] = new_id
        if new_id is not None:
            going = run["state"] in ("initialized", "started")  # each run is copied once: say it now
            say(f"{what} -> run {new_id}" + (f" ({_STILL_GOING.format(run['state'])})" if going else ""))
    for pod in source.list_pods():
        pod = {**pod, "run_id": run_ids.get(pod["run_id"]) or _copied_as(target, source_id, pod["run_id"])}
        new_id = _copy_or_say(source, target, source_id, -pod["id"], pod, report, f"pod {pod['name']}", say)
        if new_id is not None:
            say(f"pod {pod['name']} -> pod {new_id}")
    return report


def _copy_or_say(
    source: Store,
    target: Store,
    source_id: str,
    owner: int,
    fields: dict[str, Any],
    report: CopyReport,
    what: str,
    say: Callable[[str], None],
) -> int | None:
    """:func:`_copy_owner`, or None after saying that the source cannot read this one."""
    try:
        return _copy_owner(source, target, source_id, owner, fields, report)
    except SourceUnreadable as exc:
        report.unreadable.append(what)
        say(f"{what} not copied: the source cannot read it ({exc}); the others are copied")
        return None


def _read_source(read: Callable[[], Any]) -> Any:
    """``read()``, its store errors as :class:`SourceUnreadable`."""
    try:
        return read()
    except StoreError as exc:
        raise SourceUnreadable(str(exc)) from exc


def _copied_as(target: Store, source_id: str, run_id: int | None) -> int | None:
    if run_id is None:
        return None
    with target.db.read() as conn:
        row = conn.execute(
            "SELECT run_id FROM copied_runs WHERE source = ? AND source_run_id = ?", (source_id, run_id)
        ).fetchone()
    return None if row is None else int(row[0])


def _copy_owner(
    source: Store, target: Store, source_id: str, owner: int, fields: dict[str, Any], report: CopyReport
) -> int | None:
    """Copy one run (``owner`` > 0) or pod (< 0) in one target transaction; its new id, None if copied before."""
    if _copied_as(target, source_id, owner) is not None:
        report.already += 1
        return None
    try:
        with target.db.transaction() as conn:
            new_id = _insert_owner(target, conn, owner, fields)
            cur = conn.execute(
                "INSERT INTO copied_runs (source, source_run_id, run_id) VALUES (?, ?, ?) "
                "ON CONFLICT (source, source_run_id) DO NOTHING",
                (source_id, owner, new_id),
            )
            if cur.rowcount == 0:  # another copy of this file got there first
                raise _AlreadyCopied
            new_owner = new_id if owner > 0 else -new_id
            points = 0
            for part in _chunks(source, owner):
                insert_chunks(conn, target.db, new_owner, part, 0, of_run=owner > 0)
                points += sum(c[3] for c in part)
            if owner > 0:
                _copy_run_extras(source, conn, owner, new_id)
    except _AlreadyCopied:
        report.already += 1
        return None
    report.copied += 1
    report.points += points
    return new_id


def _insert_owner(target: Store, conn: Connection, owner: int, fields: dict[str, Any]) -> int:
    if owner < 0:
        conn.execute(
            "INSERT INTO pods (name, labels, phase, ip, run_id) VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
            (fields["name"], fields["labels"], fields["phase"], fields["ip"], fields["run_id"]),
        )
        return int(conn.execute("SELECT id FROM pods WHERE name = ?", (fields["name"],)).fetchone()[0])
    values = [fields[f] for f in _RUN_FIELDS]
    values[_RUN_FIELDS.index("job_metadata")] = json.dumps(fields["job_metadata"])
    values = [int(v) if isinstance(v, bool) else v for v in values]
    marks = ", ".join("?" for _ in _RUN_FIELDS)
    return target.db.insert_id(conn, f"INSERT INTO runs ({', '.join(_RUN_FIELDS)}) VALUES ({marks})", values)


def _copy_run_extras(source: Store, conn: Connection, run_id: int, new_id: int) -> None:
    """The run's configuration, batch ids and writers, into the target's transaction ``conn``."""
    columns = "writer, rank, first_seen_at, last_seen_at, closed_at, outcome"

    def read() -> tuple[Any, list[Any], list[Any]]:
        with source.db.read() as src:
            batches = src.execute("SELECT batch_id, count, stored_at FROM batches WHERE run_id = ?", (run_id,))
            batch_rows = batches.fetchall()
            writer_rows = src.execute(f"SELECT {columns} FROM run_writers WHERE run_id = ?", (run_id,)).fetchall()
        return source.get_run_config(run_id), batch_rows, writer_rows

    config, batches, writers = _read_source(read)
    if config is not None:
        conn.execute("INSERT INTO run_configs (run_id, config) VALUES (?, ?)", (new_id, config))
    if batches:
        conn.executemany(
            "INSERT INTO batches (batch_id, run_id, count, stored_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (batch_id) DO NOTHING",
            [(b, new_id, n, at) for b, n, at in batches],
        )
    if writers:
        conn.executemany(
            f"INSERT INTO run_writers (run_id, {columns}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(new_id, *w) for w in writers],
        )


def _chunks(source: Store, owner: int) -> Iterator[list[EncodedChunk]]:
    """The owner's chunks in arrival order, as encoded chunks, a few hundred at a time."""
    query = (
        f"SELECT name, first_date, last_date, count, data, body, chunks.id FROM {CHUNK_ROWS} "
        "WHERE owner = ? AND chunks.id > ? ORDER BY chunks.id LIMIT ?"
    )
    after = 0

    def read() -> list[Any]:
        with source.db.read() as conn:
            rows: list[Any] = conn.execute(query, (owner, after, _CHUNKS_PER_INSERT)).fetchall()
            return rows

    while True:
        rows = _read_source(read)
        if not rows:
            return
        after = rows[-1][6]
        yield [_encoded(row) for row in rows]


def _encoded(row: Any) -> EncodedChunk:
    name, first, last, count, data, body, chunk_id = row
    if isinstance(data, str) and data:  # an old JSON text chunk: re-encoded in the binary format
        chunk = TextChunk(chunk_id, data)
        every = range(len(chunk.dates))
        n = len(chunk.dates)
        (encoded,) = encode_chunks(
            ([name] * n, list(chunk.dates), list(chunk.values), chunk.metadata(every), chunk.cumulative(every))
        )
        return encoded
    return (name, first, last, count, bytes(data) if data else bytes(body))
