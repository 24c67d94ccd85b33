"""The dispatcher: the one thread that takes the buffer and delivers it.

The training thread only appends to ``store.buffer`` (a C call that holds the GIL, so
it needs no lock), wakes the thread once a batch's worth has piled up, and calls
:meth:`Dispatcher.trim` when the buffer holds ``max_buffer`` records. Everything else
happens in the ``mlbench-dispatcher`` thread owned by :class:`Dispatcher`:

* take what the buffer holds (``popleft``: swapping the deque out would lose records
  appended by a thread that had already looked the old one up) and let the store cut it
  into batches (:class:`~.store.Parcel`), oldest first;
* hand batches to ``deliver`` (``ApiClient.post_metrics``), at most ``max_in_flight``
  at a time; answers arrive on the client's threads and only wake this one;
* send a batch that failed again after a backoff, or as long as the server's
  ``Retry-After`` asks (also while closing), under the same id; keep only the metrics
  not stored yet when an answer is partial. This is the one place batches are tried
  again: ``deliver`` makes one attempt per call (:func:`deliver_to`);
* keep memory under ``max_buffer``: what it cannot hold goes to the store's disk, or is
  dropped and counted when there is none;
* resolve flush markers; at ``close`` leave what is undelivered to the store before the
  deadline.

Every record's state is counted in a :class:`~.ledger.Ledger` (``logged == stored +
spooled + dropped``). The clock and the wait are injected (tests run the thread on a
fake clock). Nothing here raises into the training thread.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections import deque
from typing import Callable, Final

from .._threads import start_thread
from ..client.result import BatchFuture, BatchResult
from ..errors import ClosedError
from . import notices
from .accounts import Accounts
from .batch_store import BatchStore, Parcel
from .ledger import Ledger, Marker, Stats
from .reasons import DropReason
from .seam import Deliver, DispatchSettings, asked_to_wait, next_try_in

__all__ = ["DISK_GRACE", "Dispatcher", "Stats", "start_dispatcher"]

_log = logging.getLogger("mlbench_metrics")

DISK_GRACE: Final = 1.0
"""Seconds ``close()`` may take past its timeout, all included, for the thread to finish
its local work: nothing is sent after the timeout, but what is left is put on disk (a
slow disk, a loaded machine). What is not on disk by then is counted dropped."""

_LOCK_WAIT = 0.05  # seconds close() waits for a lock the thread holds when it gives up

Wait = Callable[[threading.Event, float], bool]
"""Waits on an event for at most some seconds; True when it was set."""


def _event_wait(event: threading.Event, seconds: float) -> bool:
    return event.wait(seconds)


def start_dispatcher(
    deliver: Deliver,
    store: BatchStore,
    settings: DispatchSettings,
    on_drained: Callable[[], None] | None = None,
    on_closed: Callable[[Stats], None] | None = None,
) -> Dispatcher:
    """A dispatcher for ``store`` within ``settings``, its thread started: how the
    logger, the delivery agent and the agent's link each build theirs."""
    dispatcher = Dispatcher(deliver, store, settings, on_drained=on_drained, on_closed=on_closed)
    dispatcher.start()
    return dispatcher


class Dispatcher(Accounts):
    """Owns the ``mlbench-dispatcher`` thread that delivers what its store's buffer holds.

    Example::

        store = MemoryStore(prefix="writer-1")
        dispatcher = start_dispatcher(deliver_to(client, run_id), store, logger_config)
        store.buffer.append(("loss", 0.5, time.time_ns(), None, Context(None, 0, None)))
        dispatcher.flush(10)
        dispatcher.close(5)

    Args:
        deliver: sends one batch (:func:`deliver_to`: one attempt per call).
        store: where batches wait, in memory or on disk; owns the buffer.
        settings: ``batch_size``, ``flush_interval``, ``max_buffer``, ``max_in_flight``.
        on_drained: called by the thread each time it has emptied the buffer.
        on_closed: called with the final counts once everything is settled or left on disk.
        clock: monotonic seconds (``time.monotonic``).
        wait: waits on an event with a timeout in the clock's seconds.
    """

    def __init__(
        self,
        deliver: Deliver,
        store: BatchStore,
        settings: DispatchSettings,
        *,
        on_drained: Callable[[], None] | None = None,
        on_closed: Callable[[Stats], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wait: Wait = _event_wait,
    ) -> None:
        self._deliver = deliver
        self._store = store
        self._buffer = store.buffer
        self._batch_size = settings.batch_size
        self._flush_interval = settings.flush_interval
        self._max_buffer = settings.max_buffer
        self._max_in_flight = settings.max_in_flight
        self._on_drained = on_drained
        self._on_closed = on_closed
        self._clock = clock
        self._wait = wait
        self._wake_event = threading.Event()
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._send_until = self._answers_until = float("inf")
        self._thread: threading.Thread | None = None
        # Held while items leave the buffer and are cut into parcels (by this thread or a
        # trim), so parcels are numbered in buffer order. Taken before the ledger's lock.
        self._drain_lock = threading.Lock()
        self._disk_lock = threading.Lock()  # see Accounts: writing to disk, and giving up
        self._giving_up = False  # close() gives up: the thread writes nothing more to disk
        self._ledger = Ledger()
        self._seq = 0
        self._markers_waiting = 0  # flush markers in the buffer
        self._overflow: deque[Parcel] = deque()  # cut by trim(), not taken by the thread yet
        self._outbox: deque[Parcel] = deque()  # waiting to be sent, oldest first (the thread's)
        self._in_flight: dict[int, tuple[Parcel, BatchFuture]] = {}
        self._answered: deque[tuple[Parcel, BatchFuture]] = deque()
        self._notices = notices.Notices(_log, clock)
        self._closing = False  # at close, what is kept is said once, by _finish
        self._deletions = 0  # the store's size-bound deletions counted so far
        self._last_take = clock()

    # -- for the owner ------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; a second call does nothing."""
        if self._thread is None and not self._stopping.is_set():
            self._thread = start_thread(self._run, "mlbench-dispatcher")

    @property
    def started(self) -> bool:
        """Whether the thread was started (in this process)."""
        return self._thread is not None

    def wake(self) -> None:
        """Ask the thread to look at the buffer now."""
        self._wake_event.set()

    def trim(self) -> None:
        """Called from the training thread when the buffer holds ``max_buffer`` records.

        Moves the oldest records out of the buffer in batches for the thread to put on
        disk (or, without a disk, drop and count): O(batch_size), no I/O while the thread
        keeps up. When it does not (what waits outside the buffer is ``max_buffer``
        records already), this thread puts the batches on disk itself rather than drop
        them or let memory grow: memory stays under about twice ``max_buffer`` whatever
        happens.
        """
        with self._drain_lock:
            excess = len(self._buffer) - self._markers_waiting - self._max_buffer + self._batch_size
            if excess <= 0:
                return
            parcels = self._take(excess)
        if self._ledger.in_memory() > self._max_buffer:  # (the parcels are counted already)
            self._put_out_of_memory(parcels, DropReason.OVERFLOW, queued=False)
            parcels = [p for p in parcels if p.on_disk]
        self._overflow.extend(parcels)  # a deque: safe to extend here while the thread pops
        self._wake_event.set()

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything in the buffer before the call is settled.

        Returns:
            True when every record logged since the previous flush (and before this
            call) is stored; False when time ran out or some were dropped.
        """
        if self._thread is None or not self._thread.is_alive():
            return self.stats().pending == 0
        marker = Marker()
        with self._drain_lock:
            self._buffer.append(marker)
            self._markers_waiting += 1
        self._wake_event.set()
        return marker.event.wait(timeout) and marker.ok

    def close(self, timeout: float) -> None:
        """Deliver what is left until ``timeout`` runs out, then stop the thread.

        What is still undelivered then is left on the store's disk (for ``sync``), or
        dropped and counted (``"shutdown"``). Sending ends within ``timeout``; when the
        thread has not finished then, it has only local work left (putting what is left
        on disk: a slow disk, a loaded machine), and this waits for it up to
        :data:`DISK_GRACE` seconds more. What is not on disk when it returns is counted
        dropped and is not written afterwards: ``stats.spooled`` is on disk (or stored
        since) even when the process exits right after.
        """
        now = self._clock()
        deadline = now + max(0.0, timeout)
        # The last part of the time is kept for the answers to what is in flight, then
        # for putting what is left on disk.
        reserve = min(0.25 * max(0.0, timeout), 1.0)
        self._send_until, self._answers_until = deadline - reserve, deadline - reserve / 2
        self._stopping.set()
        self._wake_event.set()
        thread = self._thread
        if thread is None:
            self._finish()
        elif thread is not threading.current_thread():
            self._wait(self._finished, max(0.0, deadline - self._clock()))
            if not self._finished.is_set():  # nothing is sent any more: only local work is left
                # _abandon() may take 2 * _LOCK_WAIT of the grace
                self._wait(self._finished, max(0.0, deadline + DISK_GRACE - 2 * _LOCK_WAIT - self._clock()))
            if not self._finished.is_set():
                self._abandon()

    def stats(self) -> Stats:
        """A snapshot of the counts."""
        # With a timeout: a signal handler may ask while this thread holds the lock in trim().
        drained = self._drain_lock.acquire(timeout=0.5)
        try:
            return self._ledger.stats(len(self._buffer) - self._markers_waiting)
        finally:
            if drained:
                self._drain_lock.release()

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wait(self._wake_event, self._next_wait())
            self._wake_event.clear()
            try:
                self._cycle()
            except Exception as exc:  # never let the thread die silently
                self._note_error("dispatcher", exc)
                _log.exception("mlbench-metrics: the dispatcher failed; it keeps going")
            if self._stopping.is_set() and (
                self._all_done() or self._clock() >= self._send_until or self._nothing_to_send_in_time()
            ):
                break
        try:
            self._finish()
        finally:
            self._finished.set()

    def _next_wait(self) -> float:
        now = self._clock()
        until = self._send_until if self._stopping.is_set() else self._last_take + self._flush_interval
        wait = until - now
        if self._outbox and len(self._in_flight) < self._max_in_flight:
            wait = min(wait, self._outbox[0].due - now)
        return max(0.0, wait)

    def _nothing_to_send_in_time(self) -> bool:
        """Closing, nothing in flight, and the oldest batch waits out a backoff that ends
        after the last moment to send: waiting longer would change nothing."""
        return not self._in_flight and bool(self._outbox) and self._outbox[0].due >= self._send_until

    def _all_done(self) -> bool:
        return self._ledger.everything_settled() and not (len(self._buffer) - self._markers_waiting)

    def _cycle(self) -> None:
        self._settle()
        self._count_deleted()
        self._take_overflow()
        # Take the buffer only when a batch is full, the interval is up, a flush asks, or
        # we are stopping: a wake-up for an answered batch alone must not cut the buffer
        # into small batches (each costs a request).
        now = self._clock()
        if (
            self._markers_waiting
            or len(self._buffer) >= self._batch_size
            or now - self._last_take >= self._flush_interval
            or self._stopping.is_set()
        ):
            self._last_take = now
            self._take_buffer()
        if self._stopping.is_set() and self._outbox and self._outbox[0].attempts:
            # Closing while the server fails: put what waits on disk now, while there is
            # time, rather than in the last moments before the deadline (it is sent from
            # there if the server recovers).
            self._put_on_disk(self._waiting_in_memory())
        self._send()
        self._settle()

    def _take(self, limit: int) -> list[Parcel]:
        """Under ``_drain_lock``: pop up to ``limit`` items from the buffer and cut the
        records among them into parcels, numbered in buffer order."""
        popleft = self._buffer.popleft
        items = [popleft() for _ in range(min(limit, len(self._buffer)))]  # at C speed
        if not self._markers_waiting:
            return self._cut(items)
        parcels: list[Parcel] = []
        start = 0
        for i, item in enumerate(items):  # a flush is waiting: find its marker
            if type(item) is Marker:
                self._markers_waiting -= 1
                parcels += self._cut(items[start:i])
                self._ledger.add_marker(item, self._seq - 1)
                start = i + 1
        return parcels + self._cut(items[start:])

    def _cut(self, records: list[object]) -> list[Parcel]:
        if not records:
            return []
        parcels = self._store.cut(records, self._batch_size, self._seq)
        self._seq += len(parcels)
        return parcels if self._ledger.cut(len(records), parcels) else []

    def _take_overflow(self) -> None:
        parcels = []
        while self._overflow:
            parcels.append(self._overflow.popleft())
        if parcels:
            self._outbox.extend(parcels)
            self._put_out_of_memory([p for p in parcels if not p.on_disk], DropReason.OVERFLOW)

    def _take_buffer(self) -> None:
        with self._drain_lock:
            parcels = self._take(len(self._buffer))
        self._outbox.extend(parcels)
        self._bound_memory()
        if self._on_drained is not None:
            self._on_drained()

    def _bound_memory(self) -> None:
        """Keep memory under ``max_buffer`` records (waiting, in flight or still in the
        buffer): the oldest waiting batches go to disk, or are dropped without one."""
        over = self._ledger.in_memory() + len(self._buffer) - self._markers_waiting - self._max_buffer
        spill = []
        for parcel in self._outbox:
            if over <= 0:
                break
            if not parcel.on_disk:
                spill.append(parcel)
                over -= parcel.count
        self._put_out_of_memory(spill, DropReason.OVERFLOW)

    def _send(self) -> None:
        now = self._clock()
        while self._outbox and len(self._in_flight) < self._max_in_flight:
            head = self._outbox[0]
            if head.due > now or (self._stopping.is_set() and now >= self._send_until):
                return
            batch = self._load(head)
            if batch is None:
                continue
            try:
                future = self._deliver(batch)
            except ClosedError:
                return
            except Exception as exc:  # the client refused the batch itself: nothing can fix it
                self._note_error("deliver", exc)
                self._outbox.popleft()
                self._drop(head, DropReason.REJECTED)
                continue
            self._outbox.popleft()
            head.attempts += 1
            self._in_flight[head.seq] = (head, future)
            self._ledger.flying(head.count)
            future.add_done_callback(functools.partial(self._on_answer, head))

    def _on_answer(self, parcel: Parcel, future: BatchFuture) -> None:
        """Runs on a client thread: hand the answer over and wake the dispatcher."""
        self._answered.append((parcel, future))
        self._wake_event.set()

    def _settle(self) -> None:
        """Account for answered batches and queue again what may succeed later."""
        retry: list[tuple[Parcel, float]] = []  # and the wait the server asked for
        while self._answered:
            parcel, future = self._answered.popleft()
            if self._in_flight.pop(parcel.seq, None) is None:
                continue  # settled already (at close, from a partial answer)
            try:
                result = future.result()
            except BaseException as exc:  # the client failed in an unexpected way: keep it
                self._note_error("deliver", exc)
                result = BatchResult.unanswered(parcel.count, f"{type(exc).__name__}: {exc}")
            if self._apply(parcel, result):
                retry.append((parcel, asked_to_wait(result)))
        now = self._clock()
        for parcel, asked in sorted(retry, key=lambda item: item[0].seq, reverse=True):
            parcel.due = now + next_try_in(parcel.attempts, asked)
            self._outbox.appendleft(parcel)  # oldest first, ahead of newer batches
            self._keep_safe(parcel)
        self._ledger.resolve_markers(self._seq)

    def _finish(self) -> None:
        """At the end: put what waits on disk, give what is in flight until its last
        moment, keep what it did not store, release every flush."""
        self._closing = True
        with self._drain_lock:
            parcels = self._take(len(self._buffer))
        self._outbox.extend(parcels)
        self._take_overflow()
        self._settle()
        self._put_out_of_memory(self._waiting_in_memory(), DropReason.SHUTDOWN)
        flying = [future for _, future in self._in_flight.values()]
        for future in flying:
            future.abandon()  # a fan-out sends no more single posts: its answers are final
        concurrent.futures.wait(flying, timeout=max(0.0, self._answers_until - self._clock()))
        self._settle()
        for parcel, future in sorted(self._in_flight.values(), key=lambda item: item[0].seq):
            del self._in_flight[parcel.seq]
            if self._apply(parcel, future.partial()):  # only what it did not store is kept
                self._outbox.append(parcel)
        self._put_out_of_memory(self._waiting_in_memory(), DropReason.SHUTDOWN)
        for parcel in list(self._outbox):
            lost, reason = self._store.lost(parcel)
            self._count(parcel, lost, reason or DropReason.SPOOL_FAILED)
        try:
            self._store.close(everything_settled=self._ledger.everything_settled())
        except Exception as exc:
            self._note_error("spool", exc)
        self._ledger.release_markers()
        left = self._ledger.on_disk()
        where = self._store.location
        if left and where is not None:
            _log.warning(
                "mlbench-metrics: %d records wait in %s; deliver them with: mlbench-metrics sync %s", left, where, where
            )
        if self._on_closed is not None:
            self._on_closed(self._ledger.stats(0))

    def _waiting_in_memory(self) -> list[Parcel]:
        return sorted((p for p in self._outbox if not p.on_disk), key=lambda p: p.seq)

    def _abandon(self) -> None:
        """The thread did not finish in time: count what is not on disk as dropped.

        The thread writes nothing more to disk from now on; a write under way gets
        ``_LOCK_WAIT`` to end and be counted where it is. After that (a disk that hangs),
        what it writes is counted dropped, never spooled.
        """
        self._giving_up = True
        uncut = 0
        if self._drain_lock.acquire(timeout=_LOCK_WAIT):
            try:
                uncut = len(self._buffer) - self._markers_waiting
                self._buffer.clear()
                self._markers_waiting = 0
            finally:
                self._drain_lock.release()
        writing_done = self._disk_lock.acquire(timeout=_LOCK_WAIT)
        try:
            self._ledger.abandon(uncut)
        finally:
            if writing_done:
                self._disk_lock.release()
        self._ledger.release_markers()
        _log.warning("mlbench-metrics: delivery did not finish within the close timeout; see stats.dropped")
