"""``sync``: deliver what dead processes left, and never delete what was not delivered.

Reading and marking the files is their owners' (``batches.py``, ``durable/``, ``raw.py``);
this module decides what to send and when a directory may go: only when everything in it
is delivered and nothing in it was damaged. Damage is reported one line per file (what,
which file, how many records), and the directory is kept for a look. No threads.

Two destinations:

* :func:`sync_writer` (``mlbench-metrics sync``) sends what the run's server has not got
  yet (the batch spool, the durable log) to that server. A directory that also holds raw
  copies (``raw-*.log``: that server got aggregates of some records) is kept for them;
* :func:`sync_raw` (``mlbench-metrics sync --to URL``) uploads the raw copies, every
  record as it was logged, to a server with the batch endpoint: each batch keeps its id,
  so every record is stored there exactly once, however often it runs. What the run's
  own server is owed stays for :func:`sync_writer`.

Both keep up to ``in_flight`` batches sent and unanswered, as the logger's dispatcher does
(``max_in_flight``), so a sync is as fast as live delivery through the same client; the
answers are taken in the order the batches were sent, so acknowledgements and the durable
log's watermark advance exactly as they did one batch at a time.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from ..client.result import BatchResult
from ..errors import SpoolError
from ..records import Metric, MetricBatch
from .batches import acknowledge, read_spool_file
from .durable import CTL_DELIVERED, DurableMarks, DurableRecord, durable_metadata, read_durable, replay_batches
from .files import read_meta, remove_writer_dir, try_lock
from .raw import drop_unneeded, folded_count, kept_raw

__all__ = ["IN_FLIGHT", "Poster", "SyncReport", "records_waiting", "sync_raw", "sync_writer"]

IN_FLIGHT = 4
"""Batches sent and unanswered at most, as the logger's ``max_in_flight`` default."""


class Poster(Protocol):
    """What sync delivers through (an :class:`~mlbench_metrics.ApiClient`)."""

    def post_metrics(
        self, run_id: int, metrics: MetricBatch | Sequence[Metric | Mapping[str, Any]], *, batch_id: str | None = None
    ) -> Future[BatchResult]:
        """Store a batch of one run's metrics."""


@dataclass
class SyncReport:
    """What ``sync`` did with one writer directory."""

    path: Path
    run_id: int = 0
    delivered: int = 0
    already_stored: int = 0
    failed: int = 0
    torn: int = 0
    busy: bool = False
    errors: list[str] = field(default_factory=list)
    raw_kept: int = 0  # records in raw copies, kept for ``sync --to``
    raw_folded: int | None = None  # of those, the server got only as aggregates (None: not said)
    owed: bool = False  # ``sync_raw``: the run's own server still waits for records here

    @property
    def ok(self) -> bool:
        """True when nothing is left undelivered (a live writer's directory is left alone)."""
        return not self.failed and not self.torn and not self.errors


def sync_writer(
    path: Path,
    client: Poster,
    *,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    in_flight: int = IN_FLIGHT,
) -> SyncReport:
    """Deliver what one writer directory holds; delete it when all of it is delivered.

    Safe to run again (and alongside ``sync`` on other directories): acknowledgements and
    delivered marks are written as it goes, batches keep their ids, and a directory whose
    writer is alive, whose delivery agent is at work, or that another ``sync`` holds, is
    skipped.

    Args:
        path: a writer directory (with ``meta.json``).
        client: delivers the batches (an ``ApiClient`` for the run's server).
        batch_size: records per batch for ranges a dead writer never batched.
        progress: told how many records each delivered batch held.
        stop: once set, nothing more is sent (what is left stays, marked as far as it went).
        in_flight: batches sent and unanswered at most.
    """
    if stop is not None:
        client = _Stopping(client, stop)

    def work(report: SyncReport) -> None:
        pipe = _Pipeline(client, report, progress, in_flight)
        _sync_spool_files(path, pipe)
        if (path / "state.bin").exists():
            _sync_durable(path, pipe, batch_size)
        drop_unneeded(path)
        report.raw_kept = sum(len(b) for f in kept_raw(path) for b in read_spool_file(f).batches)
        report.raw_folded = folded_count(path) if report.raw_kept else None
        if report.ok and not report.raw_kept:
            remove_writer_dir(path)

    return _locked(path, work)


def sync_raw(
    path: Path,
    client: Poster,
    *,
    run_id: int | None = None,
    progress: Callable[[int], None] | None = None,
    in_flight: int = IN_FLIGHT,
) -> SyncReport:
    """Upload a writer directory's raw copies to a server with the batch endpoint.

    Each batch goes with its id (the server stores an id once) and is acknowledged in the
    copy's ``.acks`` file; a copy all uploaded is deleted, and the directory too when the
    run's own server is owed nothing from it.

    Args:
        path: a writer directory (with ``meta.json``).
        client: an ``ApiClient`` for a server with the batch endpoint (checked by the caller).
        run_id: the run to store into there (default: the directory's run).
        progress: told how many records each uploaded batch held.
        in_flight: batches sent and unanswered at most.
    """

    def work(report: SyncReport) -> None:
        if run_id is not None:
            report.run_id = run_id
        pipe = _Pipeline(client, report, progress, in_flight)
        for raw_file in kept_raw(path):
            _send_all(raw_file, pipe)
        if report.ok:
            drop_unneeded(path, uploaded=True)
        report.owed = _owed(path)
        if report.ok and not report.owed:
            remove_writer_dir(path)

    return _locked(path, work)


def _locked(path: Path, work: Callable[[SyncReport], None]) -> SyncReport:
    """Run ``work`` on the directory while holding its lock (busy: a live writer or
    another ``sync`` holds it)."""
    report = SyncReport(path)
    try:
        report.run_id = int(read_meta(path)["run_id"])
    except SpoolError as exc:
        report.errors.append(str(exc))
        return report
    try:
        lock = os.open(path / "owner.lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        report.errors.append(f"cannot open {path / 'owner.lock'}: {exc}")
        return report
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            report.busy = True
            return report
        agent = _agent_lock(path)
        if agent is None:  # a delivery agent is at work on it (its trainer may be gone)
            report.busy = True
            return report
        try:
            work(report)
        finally:
            if agent >= 0:
                os.close(agent)
    except OSError as exc:  # a file vanished or cannot be written: keep what is there
        report.errors.append(f"{path}: {type(exc).__name__}: {exc}")
    finally:
        os.close(lock)
    return report


def _agent_lock(path: Path) -> int | None:
    """Take ``agent.lock`` when there is one: its fd (-1: no agent ever ran here), or None
    when an agent holds it."""
    try:
        return try_lock(path / "agent.lock")
    except FileNotFoundError:
        return -1


class _Stopping:
    """A poster that sends nothing more once ``stop`` is set (an adoption that ends with
    its logger): every later batch fails as not sent, and stays."""

    def __init__(self, client: Poster, stop: threading.Event) -> None:
        self._client = client
        self._stop = stop

    def post_metrics(
        self, run_id: int, metrics: MetricBatch | Sequence[Metric | Mapping[str, Any]], *, batch_id: str | None = None
    ) -> Future[BatchResult]:
        """The client's, until ``stop`` is set."""
        if not self._stop.is_set():
            return self._client.post_metrics(run_id, metrics, batch_id=batch_id)
        future: Future[BatchResult] = Future()
        future.set_result(BatchResult.unanswered(len(metrics), "stopped before it was sent", batch_id))
        return future


class _Pipeline:
    """Sends batches with up to ``depth`` unanswered, and hands each answer, in the order
    the batches were sent, to the callback given with it (on the calling thread)."""

    def __init__(self, client: Poster, report: SyncReport, progress: Callable[[int], None] | None, depth: int) -> None:
        self.report = report
        self._client = client
        self._progress = progress
        self._depth = max(1, depth)
        self._flying: collections.deque[tuple[Future[BatchResult] | None, int, Callable[[bool], None]]] = (
            collections.deque()
        )

    def send(self, batch: MetricBatch | None, done: Callable[[bool], None]) -> None:
        """Send ``batch`` (None: nothing to send, ``done(True)`` in its turn)."""
        while len(self._flying) >= self._depth:
            self._settle()
        future = None
        if batch is not None:
            future = self._client.post_metrics(self.report.run_id, batch, batch_id=batch.batch_id)
        self._flying.append((future, len(batch) if batch is not None else 0, done))

    def drain(self) -> None:
        """Wait for every answer (and run its callback)."""
        while self._flying:
            self._settle()

    def _settle(self) -> None:
        future, size, done = self._flying.popleft()
        done(future is None or self._count(future.result(), size))

    def _count(self, result: BatchResult, size: int) -> bool:
        report = self.report
        if result.ok:
            if result.duplicate:
                report.already_stored += size
            else:
                report.delivered += result.stored
            if self._progress is not None:
                self._progress(size)
            return True
        report.failed += len(result.failed)
        report.errors.append(str(result.error))
        return False


def _sync_spool_files(path: Path, pipe: _Pipeline) -> None:
    for spool_file in sorted(path.glob("spool-*.log")):
        _send_file(spool_file, pipe)


def _send_file(spool_file: Path, pipe: _Pipeline) -> None:
    """Send a spool file's batches not acknowledged yet; delete it once all are."""
    if _send_all(spool_file, pipe):
        for p in (spool_file, spool_file.with_suffix(".acks")):
            with contextlib.suppress(OSError):
                p.unlink()


def _send_all(spool_file: Path, pipe: _Pipeline) -> bool:
    """Send a file's batches not acknowledged yet, acknowledging each; True when all are."""
    contents = read_spool_file(spool_file)
    pipe.report.torn += contents.torn
    pipe.report.errors += contents.problems
    unsent = 0

    def answered(batch_id: str, ok: bool) -> None:
        nonlocal unsent
        if ok:
            acknowledge(spool_file, batch_id)
        else:
            unsent += 1

    for batch in contents.batches:
        pipe.send(batch, functools.partial(answered, str(batch.batch_id)))
    pipe.drain()
    return not unsent and not contents.problems


def _owed(path: Path) -> bool:
    """Whether the run's own server still waits for records (or damage) in ``path``."""
    waiting, damaged = _waiting(path)
    return bool(waiting or damaged)


def records_waiting(path: Path) -> int:
    """How many records in a writer directory the run's own server has not got yet (its
    batch spool and durable log; not the raw copies). Reads only: safe on a live writer's
    directory, where it is a snapshot."""
    return _waiting(path)[0]


def _waiting(path: Path) -> tuple[int, bool]:
    """Records waiting for the run's own server in ``path``, and whether any file is damaged."""
    waiting, damaged = 0, False
    for spool_file in path.glob("spool-*.log"):
        contents = read_spool_file(spool_file)
        waiting += sum(len(b) for b in contents.batches)
        damaged = damaged or bool(contents.problems)
    if (path / "state.bin").exists():
        durable = read_durable(path)
        damaged = damaged or bool(durable.problems or durable.unreadable)
        waiting += sum(len(c) for c in replay_batches(durable.records, 1_000_000) if not c[0].control & CTL_DELIVERED)
    return waiting, damaged


def _sync_durable(path: Path, pipe: _Pipeline, batch_size: int) -> None:
    contents = read_durable(path)
    pipe.report.torn += contents.unreadable
    pipe.report.errors += contents.problems
    marks = DurableMarks(path)
    contiguous = not contents.problems

    def answered(first: int, end: int, control: int, ok: bool) -> None:
        nonlocal contiguous
        if ok and not control & CTL_DELIVERED:
            marks.delivered(first, control)
        contiguous = contiguous and ok
        if contiguous:
            marks.watermark(end)

    try:
        for chunk in replay_batches(contents.records, batch_size):
            first, end, control = chunk[0].seq, chunk[-1].seq + 1, chunk[0].control
            batch = None if control & CTL_DELIVERED else _durable_batch(path, chunk)
            pipe.send(batch, functools.partial(answered, first, end, control))
        pipe.drain()
    finally:
        marks.close()


def _durable_batch(path: Path, chunk: list[DurableRecord]) -> MetricBatch:
    first, end = chunk[0].seq, chunk[-1].seq + 1
    return MetricBatch(
        names=[r.name for r in chunk],
        values=[r.value for r in chunk],
        dates_us=[r.time_ns // 1000 for r in chunk],
        metadata=[durable_metadata(r.context, r.step) for r in chunk],
        cumulative=[bool(r.context.get("cum")) for r in chunk],
        batch_id=f"{path.name}:{first}-{end}",
    )
