"""Where batches live while they wait: the :class:`BatchStore` protocol and memory.

A dispatcher knows batches (:class:`Parcel`), not modes. What taking records from the
buffer, putting a batch out of memory, reading it back and forgetting it mean is its
store's business:

* :class:`MemoryStore` (``spool=False``): records stay in memory; what memory cannot
  hold is dropped, and counted by the dispatcher;
* ``spool.SpoolStore``: as memory, but batches that failed or overflowed go to framed,
  checksummed files and come back from there;
* ``spool.DurableStore``: every record is in a memory-mapped log before ``log()``
  returns; batches are ranges of it, marked there as they are cut and delivered.

A store owns the buffer the training thread appends to, because in durable mode the
buffer holds positions in its log. No threads are started here.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Protocol, Sequence

from ..records import MetricBatch, encode
from ..records.batch import Record
from .reasons import DropReason

__all__ = ["BatchStore", "MemoryStore", "Parcel", "base_batch_id", "next_batch_id"]


class Parcel:
    """A batch on its way from the buffer to the server.

    A record the dispatcher and its store share, each keeping its own fields. The
    dispatcher (with its ledger): ``seq`` (the order batches were cut in: oldest first),
    ``count`` (records it still stands for), ``attempts``, ``due`` and ``on_disk``. The
    store: ``batch_id`` (a new one for what is left after a partial answer) and the
    contents: ``records`` (taken from the buffer, not encoded yet), ``batch`` (encoded,
    ready to send) and ``place`` (where it is on disk).
    """

    __slots__ = ("attempts", "batch", "batch_id", "count", "due", "on_disk", "place", "records", "seq")

    def __init__(
        self,
        seq: int,
        batch_id: str,
        count: int,
        *,
        records: list[Record] | None = None,
        place: object = None,
    ) -> None:
        self.seq = seq
        self.batch_id = batch_id
        self.count = count
        self.records = records
        self.batch: MetricBatch | None = None
        self.place = place
        self.on_disk = place is not None
        self.attempts = 0
        self.due = 0.0

    @property
    def in_memory(self) -> bool:
        """Whether its records are held in memory (to be sent, or not written out yet)."""
        return self.records is not None or self.batch is not None

    def __repr__(self) -> str:
        return f"Parcel(seq={self.seq}, id={self.batch_id!r}, count={self.count}, on_disk={self.on_disk})"


class BatchStore(Protocol):
    """What a :class:`~mlbench_metrics.delivery.Dispatcher` keeps its batches in."""

    @property
    def buffer(self) -> collections.deque[object]:
        """What the training thread appends to (records, or positions in a log)."""

    @property
    def location(self) -> Path | None:
        """The directory the store writes to, once it has written something."""

    def cut(self, items: list[object], size: int, seq: int) -> list[Parcel]:
        """Batches of at most ``size`` of ``items`` (taken from the buffer, in order),
        numbered from ``seq``."""

    def load(self, parcel: Parcel) -> MetricBatch | None:
        """The parcel's metrics, ready to send (read back from disk if need be); None
        when the store lost them all (:meth:`lost` says why)."""

    def spill(self, parcels: Sequence[Parcel]) -> int:
        """Put the parcels' records out of memory, onto disk, oldest first, with one
        fsync; returns how many (the first n) are kept there (0: this store cannot)."""

    def failed(self, parcel: Parcel) -> None:
        """A send failed and will be tried again: keep the parcel safe meanwhile."""

    def remainder(self, parcel: Parcel, keep: list[int]) -> None:
        """Only the metrics at ``keep`` (indices into its loaded batch) are still to be
        sent: the others are stored or refused for good, never to be sent again."""

    def settle(self, parcel: Parcel) -> None:
        """The parcel is done (stored, or refused for good): forget it."""

    def lost(self, parcel: Parcel) -> tuple[int, DropReason | None]:
        """How many of the parcel's records the store has lost, and the reason."""

    def deletions(self) -> int:
        """How often the store's size bound deleted records so far: when it changes, the
        dispatcher counts the parcels waiting on disk that :meth:`lost` says are gone."""

    def close(self, everything_settled: bool) -> None:
        """Release files; remove them when nothing is left in them to deliver."""


class MemoryStore:
    """Records in memory only: nothing is written anywhere (``spool=False``).

    Args:
        prefix: the batch-id prefix (a fresh one per process: ids stay unique).
    """

    def __init__(self, prefix: str) -> None:
        self._buffer: collections.deque[object] = collections.deque()
        self.prefix = prefix

    @property
    def buffer(self) -> collections.deque[object]:
        """The deque of :data:`~mlbench_metrics.records.Record` tuples ``log()`` fills."""
        return self._buffer

    @property
    def location(self) -> Path | None:
        """None: nothing is written."""
        return None

    def cut(self, items: list[object], size: int, seq: int) -> list[Parcel]:
        """Batches of ``size`` records, in order."""
        parcels = []
        for start in range(0, len(items), size):
            piece: list[Record] = items[start : start + size]  # type: ignore[assignment]
            parcels.append(Parcel(seq, f"{self.prefix}-{seq}", len(piece), records=piece))
            seq += 1
        return parcels

    def load(self, parcel: Parcel) -> MetricBatch | None:
        """Encode the records once, just before the first send."""
        if parcel.batch is None and parcel.records is not None:
            parcel.batch = encode(parcel.records, parcel.batch_id)
            parcel.records = None
        return parcel.batch

    def spill(self, parcels: Sequence[Parcel]) -> int:
        """Nothing can go to disk."""
        return 0

    def failed(self, parcel: Parcel) -> None:
        """It stays in memory."""

    def remainder(self, parcel: Parcel, keep: list[int]) -> None:
        """Keep the metrics at ``keep``, under a new id (the old one was used)."""
        batch = self.load(parcel)
        assert batch is not None
        subset = batch.subset(keep)
        subset.batch_id = parcel.batch_id = next_batch_id(parcel.batch_id)
        parcel.batch = subset

    def settle(self, parcel: Parcel) -> None:
        """Let the records go."""
        parcel.records = None
        parcel.batch = None

    def lost(self, parcel: Parcel) -> tuple[int, DropReason | None]:
        """Memory loses nothing by itself."""
        return 0, None

    def deletions(self) -> int:
        """Never: memory has no size bound that deletes (overflow is counted as it happens)."""
        return 0

    def close(self, everything_settled: bool) -> None:
        """Nothing to release."""


def next_batch_id(batch_id: str) -> str:
    """The id for what is left of a batch after a partial answer: ``<id>~<n>``."""
    head, _, tail = batch_id.rpartition("~")
    return f"{head}~{int(tail) + 1}" if head and tail.isdigit() else f"{batch_id}~1"


def base_batch_id(batch_id: str) -> str:
    """The id a batch was cut with, before any :func:`next_batch_id` (``<id>~<n>``)."""
    head, _, tail = batch_id.rpartition("~")
    return head if head and tail.isdigit() else batch_id
