"""Raw copies: every record sent to a server without the batch endpoint, kept on disk.

When such a server (the dashboard) falls behind, the aggregator (``delivery/aggregator.py``)
sends it per-series aggregates instead of the records. So that nothing is lost to those
averages, every record sent there is copied, as it was logged, into the writer directory
(see ``files.py``)::

    raw-000001.log    framed batches in the batch spool's format (``batches.py``), whole
    raw-000001.acks   the ids of its batches uploaded by ``sync --to``
    raw.folded        written (and fsync'd) before the first aggregate is sent; at close
                      it holds how many records the server got only as aggregates

``mlbench-metrics sync --to URL`` uploads them to a server with the batch endpoint, where
each batch id is stored once: every record lands there exactly once, whatever the first
server got (raw, folded, or nothing yet). The copies are kept only when something was
folded (``raw.folded`` says so, also after a crash); otherwise the first server has every
record as it was logged (or the spool has it for ``sync``), and they are deleted, at
close or by ``sync``.

:class:`RawCopies` owns these files (written through a :class:`BatchSpool`: one writer
for the format). The aggregator copies each batch before it sends it (once the server is
known to lack the batch endpoint; a batch sent before that, as soon as it is known);
:class:`KeepRaw`, the store wrapper, copies the batches that go to disk instead, and at
close those never sent. Their bound is half of ``spool_max_bytes``: past it nothing more
is copied (so nothing more is folded), and nothing copied is ever deleted to make room.
No threads: the dispatcher's thread writes, or a client thread for a batch sent before
the server was known.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Callable, Final, Sequence

from ..delivery import BatchStore, Parcel, base_batch_id
from ..delivery.reasons import DropReason
from ..errors import SpoolError
from ..records import MetricBatch, encode
from .batches import BatchSpool
from .files import SpoolDir, fsync_dir

__all__ = ["RAW_STEM", "KeepRaw", "RawCopies", "drop_unneeded", "folded_count", "kept_raw"]

_log = logging.getLogger("mlbench_metrics")

RAW_STEM: Final = "raw"
"""The raw copies' file names: ``raw-<n>.log``."""

_MARKER: Final = "raw.folded"
_COUNT: Final = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and never more than an int64


def kept_raw(path: Path) -> list[Path]:
    """The raw copies a writer directory keeps for ``sync --to``, oldest first (none
    unless something was folded)."""
    if not (path / _MARKER).exists():
        return []
    return sorted(path.glob(f"{RAW_STEM}-*.log"))


def folded_count(path: Path) -> int | None:
    """How many records of a writer directory the server got only as aggregates, as its
    writer said at close; None when it did not say (it died first, or nothing was folded)
    or the marker is damaged (said in one warning; the copies stay for ``sync --to``)."""
    try:
        text = (path / _MARKER).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not text:  # written before the first aggregate; its writer died before close
        return None
    if _COUNT.fullmatch(text) is None:  # not str.isdigit(): "²" is a digit to it, and int() refuses it
        _log.warning(
            "mlbench-metrics: %s is damaged (%r is not a count of records); its raw copies are kept",
            path / _MARKER,
            text[:40],
        )
        return None
    return int(text)


def drop_unneeded(path: Path, *, uploaded: bool = False) -> None:
    """Delete a writer directory's raw copies when nothing was folded (they repeat what
    the server or the spool has), or, ``uploaded``, when ``sync --to`` uploaded them all."""
    if (path / _MARKER).exists() and not uploaded:
        return
    for copy in path.glob(f"{RAW_STEM}-*.*"):
        with contextlib.suppress(OSError):
            copy.unlink()
    with contextlib.suppress(OSError):
        (path / _MARKER).unlink()


class RawCopies:
    """The raw copies of one writer directory, by batch.

    Args:
        directory: the writer's directory (shared with its spool).
        max_bytes: the writer's spool bound; the copies take at most half of it.
    """

    def __init__(self, directory: SpoolDir, max_bytes: int) -> None:
        self.dir = directory
        self._spool = BatchSpool(directory, max_bytes, stem=RAW_STEM, track=False)
        self._budget = max_bytes // 2
        self._held: set[str] = set()  # ids (as cut) of batches copied and not settled
        self._full = False
        self.folded = False

    def holds(self, batch_id: str | None) -> bool:
        """Whether the batch ``batch_id`` (or the batch it is the rest of) is copied."""
        return batch_id is not None and base_batch_id(batch_id) in self._held

    def keep(self, batches: Sequence[MetricBatch]) -> list[bool]:
        """Copy the batches not copied yet (nor the batch each is the rest of), with one fsync.

        Returns:
            For each batch, whether it is copied (False: past the bound, or the disk
            refused; said once).
        """
        new = [b for b in batches if b.batch_id is not None and base_batch_id(b.batch_id) not in self._held]
        if new and not self._full:
            if self._spool.bytes_written >= self._budget:
                self._stop(f"the raw copies reached {self._budget} bytes (half of spool_max_bytes)")
            else:
                try:
                    self._spool.put(new)
                except SpoolError as exc:
                    self._stop(str(exc))
                else:
                    self._held.update(base_batch_id(str(b.batch_id)) for b in new)
        return [self.holds(b.batch_id) for b in batches]

    def keep_one(self, batch: MetricBatch) -> bool:
        """:meth:`keep` for one batch."""
        return self.keep([batch])[0]

    def mark_folded(self) -> None:
        """Something is about to be folded: the copies are needed, also after a crash."""
        self.folded = True
        try:
            path = self.dir.ensure() / _MARKER
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(path.parent)
        except (OSError, SpoolError) as exc:  # a live close still keeps them; a crash may not
            _log.warning("mlbench-metrics: cannot mark the raw copies as needed in %s: %s", self.dir.path, exc)

    def forget(self, batch_id: str) -> None:
        """The batch is settled: it will not be sent again."""
        self._held.discard(base_batch_id(batch_id))

    @property
    def written(self) -> bool:
        """Whether any copy was written."""
        return self._spool.bytes_written > 0

    def close(self, keep: bool, folded: int | None = None) -> None:
        """Close the files; delete them unless ``keep``. ``folded``: how many records the
        server got only as aggregates, written to the marker for ``sync`` to say."""
        if keep:
            self._spool.close()
            if folded is not None:
                with contextlib.suppress(OSError):
                    (self.dir.path / _MARKER).write_text(f"{folded}\n")
        else:
            self._spool.discard()

    def _stop(self, why: str) -> None:
        self._full = True
        _log.warning("mlbench-metrics: %s; records from now on are sent as logged, never folded", why)


class KeepRaw:
    """A :class:`~mlbench_metrics.delivery.BatchStore` that copies what it hands out.

    Wraps the logger's store. The aggregator copies each batch it sends; this wrapper
    copies the batches that go to disk instead (once the server is known to lack the
    batch endpoint: while nobody knows, as when the server is down, nothing is written
    twice), and, when something was folded, at close those never sent nor copied. A
    retried batch, or the rest of one, is not copied again.

    Args:
        inner: the store (spool or durable) it wraps.
        copies: where the copies go.
        batch_supported: whether the server has the batch endpoint (None: not known yet).
        folded: how many records the server got only as aggregates so far (said at close).
    """

    def __init__(
        self,
        inner: BatchStore,
        copies: RawCopies,
        batch_supported: Callable[[], bool | None],
        folded: Callable[[], int] | None = None,
    ) -> None:
        self._inner = inner
        self._copies = copies
        self._batch_supported = batch_supported
        self._folded = folded
        self._uncopied: collections.OrderedDict[int, Parcel] = collections.OrderedDict()

    @property
    def buffer(self) -> collections.deque[object]:
        """The wrapped store's buffer."""
        return self._inner.buffer

    @property
    def location(self) -> Path | None:
        """The writer directory, once something was written there."""
        location = self._inner.location
        if location is None and self._copies.written:
            return self._copies.dir.path
        return location

    def cut(self, items: list[object], size: int, seq: int) -> list[Parcel]:
        """The wrapped store's batches, remembered until they are copied."""
        parcels = self._inner.cut(items, size, seq)
        if self._batch_supported() is not True:
            for parcel in parcels:
                self._uncopied[parcel.seq] = parcel
        return parcels

    def load(self, parcel: Parcel) -> MetricBatch | None:
        """As the wrapped store (the aggregator copies what it sends)."""
        return self._inner.load(parcel)

    def spill(self, parcels: Sequence[Parcel]) -> int:
        """Copy the parcels (a server without the batch endpoint), then put them on the
        wrapped store's disk."""
        if self._batch_supported() is False:
            for parcel in parcels:
                if parcel.batch is None and parcel.records is not None:
                    parcel.batch, parcel.records = encode(parcel.records, parcel.batch_id), None
            encoded = [p for p in parcels if p.batch is not None]
            self._copy(encoded, [p.batch for p in encoded if p.batch is not None])
        return self._inner.spill(parcels)

    def failed(self, parcel: Parcel) -> None:
        """As the wrapped store."""
        self._inner.failed(parcel)

    def remainder(self, parcel: Parcel, keep: list[int]) -> None:
        """As the wrapped store (the copy is of the whole batch)."""
        self._inner.remainder(parcel, keep)

    def settle(self, parcel: Parcel) -> None:
        """As the wrapped store; the batch will not be sent again."""
        self._uncopied.pop(parcel.seq, None)
        self._copies.forget(parcel.batch_id)
        self._inner.settle(parcel)

    def lost(self, parcel: Parcel) -> tuple[int, DropReason | None]:
        """As the wrapped store."""
        return self._inner.lost(parcel)

    def deletions(self) -> int:
        """As the wrapped store."""
        return self._inner.deletions()

    def close(self, everything_settled: bool) -> None:
        """Copy what was never sent, when the copies are kept (something was folded);
        then close both. The directory stays when the copies do (for ``sync --to``).
        """
        keep = self._copies.folded and self._copies.written
        if keep:
            for parcel in list(self._uncopied.values()):
                if self._copies.holds(parcel.batch_id):
                    continue
                try:
                    batch = self._inner.load(parcel)
                except (OSError, SpoolError, ValueError):
                    continue  # the store reports what it lost of it; nothing to copy
                if batch is not None:
                    self._copy([parcel], [batch])
        self._copies.close(keep, self._folded() if self._folded is not None else None)
        self._inner.close(everything_settled and not keep)

    def _copy(self, parcels: Sequence[Parcel], batches: Sequence[MetricBatch]) -> None:
        for parcel, kept in zip(parcels, self._copies.keep(batches)):
            if kept:
                self._uncopied.pop(parcel.seq, None)
