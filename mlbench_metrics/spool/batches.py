"""The batch spool: batches that failed or overflowed, kept in files until delivered.

In a writer directory (see ``files.py``)::

    spool-000001.log    framed batches, appended, fsync'd per write
    spool-000001.acks   the ids of that file's batches delivered since, one per line

Each frame holds one batch in the wire codec's packed form (``records.pack``), read back
by the same decoder the server uses. A file is deleted once all its batches are
acknowledged. Size bound: when a writer's files pass ``max_bytes``, its oldest spool file
is deleted; its records are reported lost (``"spool_full"``) when the dispatcher reaches
them: the newest records, the ones people need most after a crash, are kept.

This module is the only writer and reader of these files: :class:`SpoolStore` (the
dispatcher's store), :func:`read_spool_file` and :func:`acknowledge` (``sync``). No
threads; the dispatcher thread does the I/O, and the training thread only when it must
put overflow on disk itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Sequence

from ..delivery import MemoryStore, Parcel
from ..delivery.reasons import DropReason
from ..errors import SpoolError
from ..records import BatchError, MetricBatch, decode_batch, encode, pack
from .files import HEADER_SIZE, SpoolDir, frame, fsync_dir, read_frames

__all__ = ["BatchSpool", "SpoolEntry", "SpoolFile", "SpoolStore", "acknowledge", "read_spool_file"]

_log = logging.getLogger("mlbench_metrics")

_FILE_BYTES: Final = 8 * 1024 * 1024


@dataclass(eq=False)
class SpoolEntry:
    """One spooled batch: where it is, and enough to tell it apart."""

    file: Path
    offset: int
    batch_id: str
    count: int
    gone: bool = False  # its file was deleted by the size bound


def _payload(batch: MetricBatch) -> bytes:
    return json.dumps({"batch_id": batch.batch_id, "packed": pack(batch)}).encode()


def _batch(payload: bytes) -> MetricBatch:
    """A batch back from its payload (checked by the codec, as the server checks it)."""
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise BatchError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BatchError("not a batch")
    return decode_batch(body)


class BatchSpool:
    """Append-only files of batches waiting for the server, oldest first.

    Args:
        directory: the writer's :class:`SpoolDir`.
        max_bytes: the bound on the writer's files (see the module's size policy).
        stem: the files' names: ``<stem>-000001.log``, ...
        track: remember each batch until it is acknowledged (and delete a file once all
            of its batches are, or past the bound). False keeps every file whole: the
            raw copies ``sync --to`` uploads (``raw.py``), bounded by their owner.
    """

    def __init__(self, directory: SpoolDir, max_bytes: int, *, stem: str = "spool", track: bool = True) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.stem = stem
        self.track = track
        self.bytes_written = 0
        self.deletions = 0  # files the size bound deleted
        self._file_no = 0
        self._file: Path | None = None
        self._fd: int | None = None
        self._pending: dict[Path, list[SpoolEntry]] = {}
        self._lock = threading.Lock()

    def put(self, batches: Sequence[MetricBatch]) -> list[SpoolEntry]:
        """Append ``batches`` and fsync them once; the oldest files go past the bound.

        Raises:
            SpoolError: they could not be written (none of them counts as written).
        """
        frames = [frame(_payload(b), len(b)) for b in batches]
        with self._lock:
            entries = []
            try:
                for batch, data in zip(batches, frames):
                    path, fd = self._writable(len(data))
                    offset = os.lseek(fd, 0, os.SEEK_END)
                    os.write(fd, data)
                    entries.append(SpoolEntry(path, offset, str(batch.batch_id), len(batch)))
                if self._fd is not None:
                    os.fsync(self._fd)
            except OSError as exc:
                raise SpoolError(f"cannot write to the spool {self.dir.path}: {exc}") from exc
            self.bytes_written += sum(map(len, frames))
            if self.track:
                for entry in entries:
                    self._pending.setdefault(entry.file, []).append(entry)
                self._enforce_bound()
        return entries

    def _writable(self, size: int) -> tuple[Path, int]:
        # Files small enough that the size bound can drop the oldest while keeping most.
        limit = min(_FILE_BYTES, max(64 * 1024, self.max_bytes // 8))
        if self._file is None or self._fd is None or os.fstat(self._fd).st_size + size > limit:
            self.dir.ensure()
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
            self._file_no += 1
            self._file = self.dir.path / f"{self.stem}-{self._file_no:06d}.log"
            self._fd = os.open(self._file, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
            fsync_dir(self.dir.path)
        return self._file, self._fd

    def _enforce_bound(self) -> None:
        while self.dir.size() > self.max_bytes and len(self._pending) > 1:
            oldest = min(self._pending)
            for entry in self._pending.pop(oldest):
                entry.gone = True
            self.deletions += 1
            _log.warning("mlbench-metrics: the spool passed %d bytes; deleted %s", self.max_bytes, oldest.name)
            for path in (oldest, oldest.with_suffix(".acks")):
                with contextlib.suppress(OSError):
                    path.unlink()

    def load(self, entry: SpoolEntry) -> MetricBatch | None:
        """Read a spooled batch back; None if it is gone or damaged."""
        if entry.gone:
            return None
        try:
            with open(entry.file, "rb") as f:
                f.seek(entry.offset)
                data = f.read(HEADER_SIZE)
                frames = list(read_frames(data + f.read(int.from_bytes(data[:4], "little"))))
        except OSError:
            return None
        if len(frames) != 1 or frames[0].payload is None:
            return None
        try:
            return _batch(frames[0].payload)
        except BatchError:
            return None

    def ack(self, entry: SpoolEntry) -> None:
        """The batch is delivered: record that, and delete its file once all of it is."""
        with self._lock:
            entries = self._pending.get(entry.file)
            if entries is None or entry not in entries:
                return
            entries.remove(entry)
            if not entries and entry.file != self._file:
                del self._pending[entry.file]
                for path in (entry.file, entry.file.with_suffix(".acks")):
                    with contextlib.suppress(OSError):
                        path.unlink()
                return
        with contextlib.suppress(OSError):  # a lost ack only means a re-send the server drops
            acknowledge(entry.file, entry.batch_id)

    def close(self) -> bool:
        """Close the file; True when nothing is left in it (the directory can go)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            return all(not entries for entries in self._pending.values())

    def discard(self) -> None:
        """Close, and delete every file this spool wrote (nothing in them is needed)."""
        self.close()
        if not self.dir.created:
            return
        for number in range(1, self._file_no + 1):
            path = self.dir.path / f"{self.stem}-{number:06d}.log"
            for p in (path, path.with_suffix(".acks")):
                with contextlib.suppress(OSError):
                    p.unlink()


def acknowledge(spool_file: Path, batch_id: str) -> None:
    """Record that the batch ``batch_id`` of ``spool_file`` is delivered.

    Raises:
        OSError: the acknowledgement could not be written.
    """
    with open(spool_file.with_suffix(".acks"), "a", encoding="utf-8") as f:
        f.write(batch_id + "\n")


@dataclass
class SpoolFile:
    """What a spool file holds, as ``sync`` reads it."""

    path: Path
    batches: list[MetricBatch] = field(default_factory=list)
    torn: int = 0  # records in frames cut short or damaged (or, without a count, frames)
    problems: list[str] = field(default_factory=list)


def read_spool_file(path: Path) -> SpoolFile:
    """The batches of a spool file not acknowledged yet, and what could not be read.

    A damaged ``.acks`` file makes the whole file unreadable for sync: sending its
    batches could store again what was acknowledged.
    """
    report = SpoolFile(path)
    acks_path = path.with_suffix(".acks")
    try:
        data = path.read_bytes()
    except OSError as exc:
        report.problems.append(f"{path.name}: cannot be read ({exc})")
        return report
    try:
        acked = set(acks_path.read_bytes().decode("utf-8").split()) if acks_path.exists() else set()
    except (OSError, UnicodeDecodeError) as exc:
        held = sum(item.count for item in read_frames(data))
        report.problems.append(
            f"{acks_path.name}: damaged ({type(exc).__name__}); the {held} records of {path.name} were not sent"
        )
        report.torn = held
        return report
    records = unknown = 0
    for item in read_frames(data):
        if item.payload is None:
            records += item.count
            unknown += not item.count
            what = f"{item.count} records" if item.count else "records (how many is unreadable)"
            report.problems.append(f"{path.name}: a {item.problem} batch at byte {item.offset}: {what} lost")
            continue
        try:
            batch = _batch(item.payload)
        except BatchError as exc:
            records += item.count
            report.problems.append(
                f"{path.name}: a damaged batch at byte {item.offset} ({exc}): {item.count} records lost"
            )
            continue
        if batch.batch_id not in acked:
            report.batches.append(batch)
    report.torn = records + unknown
    return report


class SpoolStore(MemoryStore):
    """Batches in memory, and on disk when they failed, overflowed, or are left at close.

    A spool directory that cannot be created (read-only, not a directory) is reported
    once and the store keeps to memory, like :class:`~mlbench_metrics.delivery.MemoryStore`.

    Args:
        directory: the writer's directory (created when first needed).
        max_bytes: the bound on its files.
        prefix: the batch-id prefix.
    """

    def __init__(self, directory: SpoolDir, max_bytes: int, prefix: str) -> None:
        super().__init__(prefix)
        self.dir = directory
        self.spool = BatchSpool(directory, max_bytes)
        problem = directory.problem()
        self._usable = problem is None
        if problem is not None:
            _log.warning("mlbench-metrics: %s; records are kept in memory only (no spool)", problem)

    @property
    def location(self) -> Path | None:
        """The writer directory, once something was written there."""
        return self.dir.path if self.dir.created else None

    def load(self, parcel: Parcel) -> MetricBatch | None:
        """From memory, else read back from the spool."""
        if parcel.in_memory:
            return super().load(parcel)
        if isinstance(parcel.place, SpoolEntry):
            parcel.batch = self.spool.load(parcel.place)
        return parcel.batch

    def spill(self, parcels: Sequence[Parcel]) -> int:
        """Write the parcels (encoded now if need be) with one fsync; forget their records."""
        if not self._usable or not parcels:
            return 0
        batches = []
        for parcel in parcels:
            batch = parcel.batch if parcel.batch is not None else encode(parcel.records or [], parcel.batch_id)
            batches.append(batch)
        try:
            entries = self.spool.put(batches)
        except SpoolError as exc:
            if self.dir.created:
                raise
            self._usable = False  # the directory cannot even be made: memory only, said once
            _log.warning("mlbench-metrics: %s; keeping records in memory only", exc)
            return 0
        for parcel, entry in zip(parcels, entries):
            parcel.place, parcel.records, parcel.batch = entry, None, None
        return len(entries)

    def failed(self, parcel: Parcel) -> None:
        """A failed batch goes to disk at once (it may wait long); a spooled one stays."""
        if parcel.place is None:
            self.spill([parcel])
        else:
            parcel.batch = None

    def remainder(self, parcel: Parcel, keep: list[int]) -> None:
        """Keep the rest in memory; on disk, write the rest before forgetting the whole."""
        old = parcel.place
        super().remainder(parcel, keep)
        if isinstance(old, SpoolEntry):
            parcel.place = None
            if not self.spill([parcel]):
                raise SpoolError(f"cannot write the rest of batch {old.batch_id} to the spool")
            self.spool.ack(old)

    def settle(self, parcel: Parcel) -> None:
        """Forget it, and acknowledge it on disk."""
        if isinstance(parcel.place, SpoolEntry):
            self.spool.ack(parcel.place)
        super().settle(parcel)

    def lost(self, parcel: Parcel) -> tuple[int, DropReason | None]:
        """Records the size bound deleted."""
        place = parcel.place
        if isinstance(place, SpoolEntry) and place.gone:
            return parcel.count, DropReason.SPOOL_FULL
        return 0, DropReason.SPOOL_FAILED

    def deletions(self) -> int:
        """Files the size bound deleted so far."""
        return self.spool.deletions

    def close(self, everything_settled: bool) -> None:
        """Close the spool; remove the directory when nothing in it waits."""
        empty = self.spool.close()
        self.dir.release(remove=everything_settled and empty)
