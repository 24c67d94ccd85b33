"""The ledger: where every record taken from the buffer is, and which flushes may return.

Accounting is one invariant, ``logged == stored + spooled + dropped`` (by reason), and
this module is its one owner: every change of a record's state goes through a
:class:`Ledger` method, under its one lock, so the counts stay exact while the training
thread trims, the dispatcher thread delivers and ``close()`` gives up at its deadline.
The flush markers live here too: a flush returns once every batch cut before it is
settled, and says whether any of them lost records. No threads, no I/O.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping

from .batch_store import Parcel
from .reasons import DropReason

__all__ = ["Ledger", "Marker", "Stats"]


@dataclass(frozen=True)
class Stats:
    """What the logger has done so far.

    After :meth:`~mlbench_metrics.MetricsLogger.flush` returns True, or after ``close()``,
    ``logged == stored + spooled + dropped_total`` exactly.

    Attributes:
        logged: records accepted by ``log``/``increment``/timers.
        stored: records the server has stored (a re-sent duplicate counts once).
        retried: records sent again after a failure.
        dropped: records given up, by reason (a :class:`~.reasons.DropReason`'s value):
            ``"overflow"`` (memory was full and no spool could take them),
            ``"rejected"`` (the server refused them for good), ``"shutdown"``
            (undelivered when ``close`` ran out of time, and not on disk),
            ``"spool_full"`` (the spool's size bound), ``"spool_failed"`` (the disk
            could not be written or read back).
        spooled: records waiting on disk (after ``close()``: left for ``sync``), and the
            ``folded`` ones (their raw copies wait for ``sync --to``).
        in_flight: records sent and not answered yet.
        pending: records not settled yet: buffered, waiting, in flight or on disk.
        last_error: the most recent delivery error, as text.
        folded: records not sent as they are but folded into aggregate points the
            server stored (a server without the batch endpoint that fell behind);
            counted in ``spooled``, not in ``stored``: their raw copies are on disk for
            an exact upload with ``mlbench-metrics sync --to URL``.
        aggregates: aggregate points the server stored.
    """

    logged: int
    stored: int
    retried: int
    dropped: Mapping[str, int]
    spooled: int
    in_flight: int
    pending: int
    last_error: str | None
    folded: int = 0
    aggregates: int = 0

    @property
    def dropped_total(self) -> int:
        """All dropped records, whatever the reason."""
        return sum(self.dropped.values())

    @property
    def unsent(self) -> int:
        """Records neither stored nor folded: waiting for ``sync``, or dropped."""
        return self.logged - self.stored - self.folded


class Marker:
    """A flush request travelling through the buffer behind the records it covers."""

    __slots__ = ("event", "ok", "since", "upto")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False
        self.since = -1  # it covers batches after this one ...
        self.upto = -1  # ... up to this one


class Ledger:
    """The counts of one dispatcher's records, and its flushes, under one lock.

    A record is counted once it is cut into a parcel (before that, it is in the buffer):
    *held* until it is stored or dropped, and *parked* while its parcel is on disk.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, Parcel] = {}  # every parcel cut and not settled, in seq order
        self._cut = 0
        self._held = 0
        self._parked = 0
        self._flying = 0
        self._stored = 0
        self._kept = 0  # settled on disk by the deliverer (Stats.folded: the aggregator's)
        self._stand_ins = 0
        self._retried = 0
        self._dropped: dict[str, int] = {}
        self._abandoned = False
        self._last_error: str | None = None
        self._markers: list[Marker] = []
        self._lost_seqs: list[int] = []  # batches that lost records, since the last resolved flush
        self._last_upto = -1

    # -- records ----------------------------------------------------------------------

    def cut(self, records: int, parcels: list[Parcel]) -> bool:
        """``records`` left the buffer as ``parcels``; False when it is too late (the
        dispatcher was abandoned at close): then they count as dropped at shutdown."""
        with self._lock:
            self._cut += records
            if self._abandoned:
                self._drop(DropReason.SHUTDOWN, records, None)
                return False
            self._held += records
            for parcel in parcels:
                self._live[parcel.seq] = parcel
                if parcel.on_disk:
                    self._parked += parcel.count
            return True

    def parked(self, parcels: list[Parcel]) -> None:
        """These parcels' records are on disk now."""
        with self._lock:
            for parcel in parcels:
                if not parcel.on_disk:
                    parcel.on_disk = True
                    if not self._abandoned:
                        self._parked += parcel.count

    def settled(self, parcel: Parcel, n: int, reason: DropReason | None) -> None:
        """``n`` of the parcel's records are done: stored (no reason) or dropped."""
        if n <= 0:
            return
        with self._lock:
            if not self._release(parcel, n):
                return
            if reason is None:
                self._stored += n
            else:
                self._drop(reason, n, parcel.seq)

    def kept(self, parcel: Parcel, n: int, stand_ins: int) -> None:
        """``n`` of the parcel's records were settled by the deliverer keeping them on disk
        (so they count as spooled), and the server stored ``stand_ins`` points for them."""
        if n <= 0 and stand_ins <= 0:
            return
        with self._lock:
            if self._release(parcel, n):
                self._kept += n
                self._stand_ins += stand_ins

    def _release(self, parcel: Parcel, n: int) -> bool:
        """Under the lock: ``n`` of the parcel's records leave it; False when nothing
        counts any more (abandoned)."""
        parcel.count -= n
        if self._abandoned:
            return False
        self._held -= n
        if parcel.on_disk:
            self._parked -= n
        return True

    def _drop(self, reason: DropReason, n: int, seq: int | None) -> None:
        self._dropped[reason.value] = self._dropped.get(reason.value, 0) + n
        if seq is not None:
            self._lost_seqs.append(seq)

    def forget(self, parcel: Parcel) -> None:
        """The parcel is settled for good."""
        with self._lock:
            self._live.pop(parcel.seq, None)

    def flying(self, records: int) -> None:
        """``records`` more (or, negative, fewer) are in flight."""
        with self._lock:
            if not self._abandoned:  # abandon() counted what was in flight already
                self._flying += records

    def retried(self, records: int) -> None:
        """``records`` will be sent again."""
        with self._lock:
            self._retried += records

    def error(self, text: str) -> None:
        """The latest delivery error."""
        with self._lock:
            self._last_error = text

    def on_disk(self) -> int:
        """Records waiting in the store's files to be sent (not those kept by the deliverer)."""
        with self._lock:
            return self._parked

    def in_memory(self) -> int:
        """Records cut and not settled that are not on disk."""
        with self._lock:
            return self._held - self._parked

    def everything_settled(self) -> bool:
        """Whether no parcel waits anywhere, on disk included."""
        with self._lock:
            return not self._live

    @property
    def abandoned(self) -> bool:
        """Whether :meth:`abandon` was called: nothing counts any more."""
        with self._lock:
            return self._abandoned

    def abandon(self, uncut: int) -> None:
        """``close()`` cannot wait any longer: what is not on disk (and the ``uncut``
        records still in the buffer) counts as dropped at shutdown, and no later change
        counts again."""
        with self._lock:
            self._abandoned = True
            lost = self._held - self._parked + uncut
            self._cut += uncut
            self._held = self._parked
            self._flying = 0
            if lost:
                self._drop(DropReason.SHUTDOWN, lost, None)

    def stats(self, buffered: int) -> Stats:
        """A snapshot, with ``buffered`` records still in the buffer."""
        with self._lock:
            return Stats(
                logged=self._cut + buffered,
                stored=self._stored,
                retried=self._retried,
                dropped=dict(self._dropped),
                spooled=self._parked + self._kept,
                in_flight=self._flying,
                pending=self._held + buffered,
                last_error=self._last_error,
                folded=self._kept,
                aggregates=self._stand_ins,
            )

    # -- flushes ------------------------------------------------------------------------

    def add_marker(self, marker: Marker, last_seq: int) -> None:
        """A flush covering every parcel up to ``last_seq`` (cut before it reached it)."""
        with self._lock:
            marker.since, marker.upto = self._last_upto, last_seq
            self._last_upto = last_seq
            self._markers.append(marker)

    def resolve_markers(self, next_seq: int) -> None:
        """Release the flushes whose parcels are all settled; ``ok`` when none lost any."""
        with self._lock:
            if not self._markers:
                return
            oldest = next(iter(self._live), next_seq)
            keep = []
            for marker in self._markers:
                if marker.upto < oldest:
                    marker.ok = not any(marker.since < s <= marker.upto for s in self._lost_seqs)
                    marker.event.set()
                    # later flushes cover only batches after this one
                    self._lost_seqs = [s for s in self._lost_seqs if s > marker.upto]
                else:
                    keep.append(marker)
            self._markers = keep

    def release_markers(self) -> None:
        """Release every waiting flush as failed (the dispatcher is stopping)."""
        with self._lock:
            markers, self._markers = self._markers, []
        for marker in markers:
            marker.ok = False
            marker.event.set()
