"""``sync``: deliver what dead processes left, and never delete what was not delivered.

Reading and marking the files is their owners' (``batches.py``, ``durable.py``); this
module decides what to send and when a directory may go: only when everything in it is
delivered and nothing in it was damaged. Damage is reported one line per file (what,
which file, how many records), and the directory is kept for a look. No threads.
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

from ..delivery import BatchResult
from ..errors import SpoolError
from ..records import Metric, MetricBatch
from .batches import acknowledge, read_spool_file
from .durable import CTL_DELIVERED, DurableMarks, DurableRecord, durable_metadata, read_durable, replay_batches
from .files import read_meta, remove_writer_dir, try_lock

__all__ = ["Poster", "SyncReport", "sync_writer"]


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
            _sync_files(path, _Sender(client, report, progress, stop), batch_size)
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


def _sync_files(path: Path, sender: _Sender, batch_size: int) -> None:
    _sync_spool_files(path, sender)
    if (path / "state.bin").exists():
        _sync_durable(path, sender, batch_size)
    if sender.report.ok:
        remove_writer_dir(path)


class _Sender:
    """Sends one directory's batches, one at a time, and counts them in its report."""

    def __init__(
        self,
        client: Poster,
        report: SyncReport,
        progress: Callable[[int], None] | None,
        stop: threading.Event | None,
    ) -> None:
        self.client = client
        self.report = report
        self.progress = progress
        self.stop = stop

    def post(self, batch: MetricBatch) -> bool:
        """Whether the batch is stored (now, or before)."""
        report = self.report
        if self.stop is not None and self.stop.is_set():
            if _STOPPED not in report.errors:
                report.errors.append(_STOPPED)
            return False
        result = self.client.post_metrics(report.run_id, batch, batch_id=batch.batch_id).result()
        if result.ok:
            if result.duplicate:
                report.already_stored += len(batch)
            else:
                report.delivered += result.stored
            if self.progress is not None:
                self.progress(len(batch))
            return True
        report.failed += len(result.failed)
        report.errors.append(str(result.error))
        return False


_STOPPED = "stopped before everything was delivered"


def _sync_spool_files(path: Path, sender: _Sender) -> None:
    report = sender.report
    for spool_file in sorted(path.glob("spool-*.log")):
        contents = read_spool_file(spool_file)
        report.torn += contents.torn
        report.errors += contents.problems
        all_sent = True
        for batch in contents.batches:
            if sender.post(batch):
                acknowledge(spool_file, str(batch.batch_id))
            else:
                all_sent = False
        if all_sent and not contents.problems:
            for p in (spool_file, spool_file.with_suffix(".acks")):
                with contextlib.suppress(OSError):
                    p.unlink()


def _sync_durable(path: Path, sender: _Sender, batch_size: int) -> None:
    contents = read_durable(path)
    report = sender.report
    report.torn += contents.unreadable
    report.errors += contents.problems
    marks = DurableMarks(path)
    try:
        contiguous = not contents.problems
        for chunk in replay_batches(contents.records, batch_size):
            first, end, control = chunk[0].seq, chunk[-1].seq + 1, chunk[0].control
            done = bool(control & CTL_DELIVERED) or sender.post(_durable_batch(path, chunk))
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
