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
"""

from __future__ import annotations

import contextlib
import fcntl
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
from .raw import drop_unneeded, kept_raw

__all__ = ["Poster", "SyncReport", "sync_raw", "sync_writer"]


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
    """
    if stop is not None:
        client = _Stopping(client, stop)

    def work(report: SyncReport) -> None:
        _sync_spool_files(path, client, report, progress)
        if (path / "state.bin").exists():
            _sync_durable(path, client, report, batch_size, progress)
        drop_unneeded(path)
        report.raw_kept = sum(len(b) for f in kept_raw(path) for b in read_spool_file(f).batches)
        if report.ok and not report.raw_kept:
            remove_writer_dir(path)

    return _locked(path, work)


def sync_raw(
    path: Path,
    client: Poster,
    *,
    run_id: int | None = None,
    progress: Callable[[int], None] | None = None,
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
    """

    def work(report: SyncReport) -> None:
        if run_id is not None:
            report.run_id = run_id
        for raw_file in kept_raw(path):
            _send_all(raw_file, client, report, progress)
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


def _post(client: Poster, report: SyncReport, batch: MetricBatch, progress: Callable[[int], None] | None) -> bool:
    result = client.post_metrics(report.run_id, batch, batch_id=batch.batch_id).result()
    if result.ok:
        if result.duplicate:
            report.already_stored += len(batch)
        else:
            report.delivered += result.stored
        if progress is not None:
            progress(len(batch))
        return True
    report.failed += len(result.failed)
    report.errors.append(str(result.error))
    return False


def _sync_spool_files(path: Path, client: Poster, report: SyncReport, progress: Callable[[int], None] | None) -> None:
    for spool_file in sorted(path.glob("spool-*.log")):
        _send_file(spool_file, client, report, progress)


def _send_file(spool_file: Path, client: Poster, report: SyncReport, progress: Callable[[int], None] | None) -> None:
    """Send a spool file's batches not acknowledged yet; delete it once all are."""
    if _send_all(spool_file, client, report, progress):
        for p in (spool_file, spool_file.with_suffix(".acks")):
            with contextlib.suppress(OSError):
                p.unlink()


def _send_all(spool_file: Path, client: Poster, report: SyncReport, progress: Callable[[int], None] | None) -> bool:
    """Send a file's batches not acknowledged yet, acknowledging each; True when all are."""
    contents = read_spool_file(spool_file)
    report.torn += contents.torn
    report.errors += contents.problems
    all_sent = True
    for batch in contents.batches:
        if _post(client, report, batch, progress):
            acknowledge(spool_file, str(batch.batch_id))
        else:
            all_sent = False
    return all_sent and not contents.problems


def _owed(path: Path) -> bool:
    """Whether the run's own server still waits for records (or damage) in ``path``."""
    for spool_file in path.glob("spool-*.log"):
        contents = read_spool_file(spool_file)
        if contents.batches or contents.problems:
            return True
    if not (path / "state.bin").exists():
        return False
    durable = read_durable(path)
    if durable.problems or durable.unreadable:
        return True
    return any(not chunk[0].control & CTL_DELIVERED for chunk in replay_batches(durable.records, 1_000_000))


def _sync_durable(
    path: Path, client: Poster, report: SyncReport, batch_size: int, progress: Callable[[int], None] | None
) -> None:
    contents = read_durable(path)
    report.torn += contents.unreadable
    report.errors += contents.problems
    marks = DurableMarks(path)
    try:
        contiguous = not contents.problems
        for chunk in replay_batches(contents.records, batch_size):
            first, end, control = chunk[0].seq, chunk[-1].seq + 1, chunk[0].control
            done = bool(control & CTL_DELIVERED) or _post(client, report, _durable_batch(path, chunk), progress)
            if done and not control & CTL_DELIVERED:
                marks.delivered(first, control)
            contiguous = contiguous and done
            if contiguous:
                marks.watermark(end)
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
