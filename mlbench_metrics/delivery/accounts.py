"""A dispatcher's accounts: what becomes of each parcel, in the ledger and in the store.

:class:`Accounts` is the part of :class:`~.dispatcher.Dispatcher` that records a parcel's
fate once the thread has decided it: spilled to the store's disk or dropped when memory
is short, stored, refused, kept by the deliverer or to be sent again when an answer
comes, lost by the store, forgotten when settled; and the warnings about drops and
errors (:mod:`.notices`). Every count goes through the :class:`~.ledger.Ledger`. It runs
on the dispatcher's thread (and, for :meth:`Accounts._put_out_of_memory`, in ``trim``). No
threads.
"""

from __future__ import annotations

import threading
from collections import deque

from ..client.result import BatchResult
from ..records import MetricBatch
from . import notices
from .batch_store import BatchStore, Parcel
from .ledger import Ledger
from .reasons import DropReason

__all__ = ["Accounts"]


class Accounts:
    """The parcels' accounts of a dispatcher (which sets the attributes below)."""

    _store: BatchStore
    _ledger: Ledger
    _notices: notices.Notices
    _outbox: deque[Parcel]
    _closing: bool  # at close, what is kept is said once, by the dispatcher's _finish
    _deletions: int  # the store's size-bound deletions counted so far
    # Held while the store writes parcels to disk and the ledger counts them there, and by
    # close() when it gives up (Ledger.abandon): what is counted on disk then is on disk,
    # and nothing is written once the counts are final.
    _disk_lock: threading.Lock
    _giving_up: bool  # set by close() before it takes _disk_lock: write nothing more

    def _may_write(self) -> bool:
        """Under ``_disk_lock``: whether writing to disk can still count."""
        return not (self._giving_up or self._ledger.abandoned)

    def _put_on_disk(self, parcels: list[Parcel]) -> int | None:
        """Spill ``parcels`` to the store's disk where it can; the rest stay in memory.
        Returns how many it kept (0 once ``close()`` gave up), or None when the spool failed."""
        if not parcels:
            return 0
        with self._disk_lock:
            if not self._may_write():  # counted as dropped at shutdown (or about to be)
                return 0
            try:
                kept = self._store.spill(parcels)
            except Exception as exc:
                self._note_error("spool", exc)
                return None
            self._ledger.parked(parcels[:kept])
        return kept

    def _keep_safe(self, parcel: Parcel) -> None:
        """A send failed and will be tried again: the store keeps the parcel safe meanwhile
        (on disk, for a spool), and the ledger counts it where it is."""
        with self._disk_lock:
            if not self._may_write():
                return
            try:
                self._store.failed(parcel)
            except Exception as exc:  # it stays in memory: nothing is lost
                self._note_error("spool", exc)
            if parcel.place is not None:
                self._ledger.parked([parcel])

    def _put_out_of_memory(self, parcels: list[Parcel], reason: DropReason, *, queued: bool = True) -> None:
        """Spill ``parcels`` to the store's disk; drop (and count) what it cannot keep."""
        kept = self._put_on_disk(parcels)
        if kept is None:
            kept, reason = 0, DropReason.SPOOL_FAILED
        for parcel in parcels[kept:]:
            self._drop(parcel, reason, queued=queued)

    def _count_deleted(self) -> None:
        """After the store's size bound deleted records: count the parcels waiting on
        disk that are all gone now, so ``stats.spooled`` says what is on disk (one only
        partly gone is counted when it is loaded)."""
        deletions = self._store.deletions()
        if deletions == self._deletions:
            return
        self._deletions = deletions
        for parcel in [p for p in self._outbox if p.on_disk and not p.in_memory]:
            lost, reason = self._store.lost(parcel)
            if lost >= parcel.count > 0:
                self._drop(parcel, reason or DropReason.SPOOL_FAILED)

    def _load(self, parcel: Parcel) -> MetricBatch | None:
        """The parcel's batch to send; counts what the store lost of it (None: all)."""
        try:
            batch = self._store.load(parcel)
        except Exception as exc:
            self._note_error("spool", exc)
            batch = None
        gone = parcel.count - (len(batch) if batch is not None else 0)
        if gone > 0:
            _, reason = self._store.lost(parcel)
            self._count(parcel, gone, reason or DropReason.SPOOL_FAILED)
        if batch is None or not len(batch):
            self._outbox.remove(parcel)
            self._forget(parcel)
            return None
        return batch

    def _apply(self, parcel: Parcel, result: BatchResult) -> bool:
        """Count an answer for an in-flight parcel; True when some of it is to be sent again."""
        self._ledger.flying(-parcel.count)
        again = result.retryable()
        rejected = len(result.rejected())
        if result.failed:  # at close, what is kept is said by the line on where it waits
            self._note_error("deliver", result.error, warn=rejected > 0 or not self._closing)
        kept = len(result.kept)  # settled by the deliverer on disk: spooled
        stored = parcel.count - len(again) - rejected - kept
        if rejected:
            self._notices.note("rejected", rejected, notices.refused(result.error))
        if again and (stored or rejected or kept):
            try:
                with self._disk_lock:  # once close() gave up, what is on disk stays as counted
                    if self._may_write():
                        self._store.remainder(parcel, again)
            except Exception as exc:  # the whole batch will be sent again: at least once
                self._note_error("spool", exc)
                again, stored, rejected, kept = list(range(parcel.count)), 0, 0, 0
        self._count(parcel, stored, None)
        self._count(parcel, rejected, DropReason.REJECTED)
        self._ledger.kept(parcel, kept, result.stand_ins)
        if not again:
            self._forget(parcel)
            return False
        self._ledger.retried(len(again))
        return True

    def _count(self, parcel: Parcel, n: int, reason: DropReason | None) -> None:
        """``n`` of the parcel's records are done: stored (no reason) or dropped."""
        self._ledger.settled(parcel, n, reason)
        if n > 0 and reason is not None:
            self._notices.note(f"drop:{reason.value}", n, notices.dropped(reason.value))

    def _drop(self, parcel: Parcel, reason: DropReason, *, queued: bool = True) -> None:
        """Give the parcel up; ``queued``: it may be in the outbox (only the thread's)."""
        self._count(parcel, parcel.count, reason)
        if queued and parcel in self._outbox:
            self._outbox.remove(parcel)
        self._forget(parcel)

    def _forget(self, parcel: Parcel) -> None:
        try:
            self._store.settle(parcel)
        except Exception as exc:
            self._note_error("spool", exc)
        self._ledger.forget(parcel)

    def _note_error(self, kind: str, exc: BaseException | None, *, warn: bool = True) -> None:
        if exc is None:
            return
        text = f"{type(exc).__name__}: {exc}"
        self._ledger.error(text)
        if warn:
            self._notices.note(f"{kind}:{type(exc).__name__}", 1, notices.failed(kind, text))
