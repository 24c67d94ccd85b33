"""The bounded buffer the training thread appends to, and the one thread that empties it.

The training thread only ever does ``dispatcher.buffer.append(record)`` (a C call that
holds the GIL, so it needs no lock) and, once a batch's worth has piled up, ``wake()``.
Everything else happens in the ``mlbench-dispatcher`` thread owned by
:class:`Dispatcher`:

* take what the buffer holds with ``popleft`` (the only consumer besides an overflow
  trim; swapping the deque out instead would lose records appended by a thread that
  had already looked the old one up), cut it into batches of ``batch_size``, encode
  each once into a :class:`~mlbench_metrics.records.MetricBatch` with a ``batch_id``;
* hand batches, oldest first, to ``deliver`` (``ApiClient.post_metrics``), with at most
  ``max_in_flight`` outstanding; completions arrive on the client's threads and only
  wake this one;
* keep failed batches and send them again after a backoff, under the same
  ``batch_id``, so the embedded server stores each exactly once;
* resolve flush markers, count everything in :class:`Stats`.

With a store (``spool.SpoolStore`` or ``spool.DurableStore``) batches that failed, that
memory cannot hold (past ``max_buffer`` records), or that are left when ``close`` runs
out of time are *parked* on disk and sent again from there, oldest first; without one
they are dropped and counted. In durable mode the buffer is a ``spool.DurableBuffer``:
the training thread writes each record to the log and queues its slot number, batches
are ranges of slots marked in the log before they are sent, and their records are read
back from the log just before sending. Nothing here ever raises into the training
thread. Record layout and encoding live here too, so the hot path and the thread agree
on one definition.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Final, Iterator, Mapping, Optional, Sequence, cast

from ._threads import start_thread
from .api import BatchResult
from .errors import ClosedError
from .records import MetricBatch, SteppedMetadata

__all__ = ["Context", "Dispatcher", "Stats", "encode", "encode_columns"]

_log = logging.getLogger("mlbench_metrics")

_BACKOFF_FIRST: Final = 0.1
_BACKOFF_MAX: Final = 10.0


# -- records ----------------------------------------------------------------------------
#
# A record is the tuple the hot path builds: (name, value, time_ns, step, context).
# ``context`` is a shared Context, rebuilt only when the epoch, the default step or the
# extra metadata change, so a record costs one small tuple. In durable mode the buffer
# holds only each record's slot number in the log (see ``spool.DurableBuffer``).


@dataclass(frozen=True)
class Context:
    """What records logged between two changes of epoch or step have in common."""

    rank: int | None
    epoch: int
    step: int | None
    cumulative: bool = False
    extra: str = ""  # extra metadata as JSON members, e.g. ', "lr": 0.1'
    plain: str = field(init=False, compare=False, repr=False)
    stepped: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        head = "{" if self.rank is None else f'{{"rank": {self.rank}, '
        prefix = f'{head}"epoch": {self.epoch}'
        stepped = f'{prefix}, "step": %d{self.extra}}}'
        # Precomputed once per context, so encoding a record costs one lookup or one %.
        object.__setattr__(self, "stepped", stepped)
        object.__setattr__(self, "plain", f"{prefix}{self.extra}}}" if self.step is None else stepped % self.step)

    def metadata(self, step: int | None) -> str:
        """The record's metadata: JSON with rank, epoch and step, as the dashboard's own code."""
        return self.plain if step is None else self.stepped % step


Record = tuple[str, Any, int, Optional[int], Context]
"""(name, value: int | float | str, time_ns, step or None, context)."""


def encode(records: Sequence[Record], batch_id: str | None = None) -> MetricBatch:
    """Turn hot-path records into a :class:`MetricBatch` (dates in microseconds).

    Values stay numbers: whoever puts them on the wire turns them into text (``str()``
    keeps NaN and infinities as ``nan``/``inf``, which the dashboard stores verbatim).
    Metadata stays templates and steps (see :class:`SteppedMetadata`). This runs in the
    logging process, so it does as little per record as it can: a few list passes.
    """
    names, values, times, steps, contexts = zip(*records)  # one C-speed pass
    return encode_columns(list(names), list(values), list(times), list(steps), contexts, batch_id)


def encode_columns(
    names: list[str],
    values: list[Any],
    times: list[int],
    steps: list[Any],
    contexts: Sequence[Context],
    batch_id: str | None = None,
) -> MetricBatch:
    """:func:`encode` for records given as columns (the lists become the batch's own)."""
    n = len(names)
    batch = MetricBatch(names=names, values=values, dates_ns=times, batch_id=batch_id)
    batch.checked = True  # log() refused anything the dashboard would refuse
    ctx = contexts[0]
    if contexts.count(ctx) == n:  # one context (identity compares in C): the common case
        batch.cumulative = [ctx.cumulative] * n
        unstepped = steps.count(None)
        if unstepped == n:
            batch.metadata = [ctx.plain] * n
        elif unstepped == 0:
            batch.metadata = SteppedMetadata([ctx.stepped], [True], None, cast("list[int]", steps), n)
        else:
            index = [0 if s is None else 1 for s in steps]
            numbers = [0 if s is None else s for s in steps]
            batch.metadata = SteppedMetadata([ctx.plain, ctx.stepped], [False, True], index, numbers, n)
    else:  # the epoch (or the extra metadata) changed within the batch
        distinct = list({id(c): c for c in contexts}.values())
        slot = {id(c): 2 * i for i, c in enumerate(distinct)}
        templates = [t for c in distinct for t in (c.plain, c.stepped)]
        index = [slot[id(c)] + (s is not None) for c, s in zip(contexts, steps)]
        numbers = [0 if s is None else s for s in steps]
        batch.metadata = SteppedMetadata(templates, [False, True] * len(distinct), index, numbers, n)
        batch.cumulative = [c.cumulative for c in contexts]
    return batch


class _Marker:
    """A flush request travelling through the buffer behind the records it covers."""

    __slots__ = ("clean", "event", "ok", "upto")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.ok = False
        self.clean = True  # False when records logged before it were dropped on the way
        self.upto = -1


# -- batches in the dispatcher ---------------------------------------------------------------


class _Batch:
    """A batch in the dispatcher: its records, then their encoding, or a place on disk.

    In durable mode it starts on disk: its records are the log's slots
    ``first..first+count-1``. Otherwise ``first`` is 0.
    """

    __slots__ = ("_encoded", "_records", "attempts", "batch_id", "count", "due", "first", "handle", "seq")

    def __init__(self, seq: int, batch_id: str, first: int, records: list[Any] | None, count: int) -> None:
        self.seq = seq
        self.batch_id = batch_id
        self.first = first
        self._records = records
        self._encoded: MetricBatch | None = None
        self.count = count
        self.handle: Any = None if records is not None else True  # set once parked on disk
        self.attempts = 0
        self.due = 0.0  # time.monotonic() before which it is not sent again

    @property
    def in_memory(self) -> bool:
        """Whether its records are held in memory (else only on disk)."""
        return self._records is not None or self._encoded is not None

    def encoded(self) -> MetricBatch:
        """The batch, encoded on first use so the thread encodes just in time."""
        if self._encoded is None:
            self._encoded = encode(self._records or [], self.batch_id)
            self._records = None
        return self._encoded

    def set_encoded(self, batch: MetricBatch) -> None:
        self._encoded = batch
        self._records = None
        self.count = len(batch)

    def release(self) -> None:
        """Forget the records: they are on disk now."""
        self._records = None
        self._encoded = None

    def __len__(self) -> int:
        return self.count


@dataclass(frozen=True)
class Stats:
    """What the logger has done so far.

    Attributes:
        logged: records accepted by ``log``/``increment``/timers.
        stored: records the server has stored (duplicates of a re-send count once).
        retried: records sent again after a failure.
        dropped: records given up, by reason: ``"overflow"`` (memory was full and there
            is no spool), ``"rejected"`` (the server refused them for good),
            ``"shutdown"`` (undelivered when ``close`` ran out of time, no spool),
            ``"spool_full"`` (the spool's size bound), ``"spool_failed"`` (it could not
            be written or read back).
        spooled: records written to the on-disk spool (durable mode: parked on disk).
        in_flight: records sent and not answered yet.
        pending: records buffered, waiting to be sent again, or parked on disk.
        last_error: the most recent delivery error, as text.
    """

    logged: int
    stored: int
    retried: int
    dropped: Mapping[str, int]
    spooled: int
    in_flight: int
    pending: int
    last_error: str | None

    @property
    def dropped_total(self) -> int:
        """All dropped records, whatever the reason."""
        return sum(self.dropped.values())


class Dispatcher:
    """Owns the buffer and the ``mlbench-dispatcher`` thread that delivers it.

    Args:
        deliver: sends one batch; returns a Future of its :class:`BatchResult`
            (``functools.partial(client.post_metrics, run_id)``).
        batch_size: most records in one batch; also how many wake the thread early.
        flush_interval: seconds between deliveries when fewer records arrive.
        max_buffer: most records held in memory (buffered, waiting, or in flight).
        max_in_flight: batches sent and not answered yet, at most.
        store: where batches are parked on disk (``spool.SpoolStore`` or
            ``spool.DurableStore``), or None to drop (and count) what memory cannot hold.
        on_drained: called by the thread each time it has emptied the buffer.
    """

    def __init__(
        self,
        deliver: Callable[[MetricBatch], Future[BatchResult]],
        *,
        batch_size: int,
        flush_interval: float,
        max_buffer: int,
        max_in_flight: int = 4,
        store: Any = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self.buffer: collections.deque[Any] = collections.deque()
        self._deliver = deliver
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_buffer = max_buffer
        self._max_in_flight = max_in_flight
        self.store = store
        self._on_drained = on_drained
        self._init_state()

    def _init_state(self) -> None:
        self._wake_event = threading.Event()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()  # between the thread's drain and the training thread's trim
        self._thread: threading.Thread | None = None
        self._overflow: collections.deque[list[Any]] = collections.deque()
        self._overflow_records = 0
        self._completed: collections.deque[tuple[_Batch, Future[BatchResult]]] = collections.deque()
        self._outbox: collections.deque[_Batch] = collections.deque()
        self._in_flight: dict[int, _Batch] = {}
        self._markers: list[tuple[int, _Marker]] = []
        self._markers_waiting = 0
        self._lost_seqs: list[int] = []
        self._last_marker_upto = -1
        self._seq = 0  # batches made
        self._untaken = 0  # durable: every slot below this one is in a batch already
        self._taken_ahead: dict[int, int] = {}  # durable: slot ranges in batches beyond it
        self._taken = 0
        self._stored = 0
        self._retried = 0
        self._spooled = 0
        self._dropped: dict[str, int] = {}
        self._trim_drops = 0
        self._trim_drops_seen = 0
        self._last_error: str | None = None
        self._error_kinds: set[str] = set()
        self._batch_prefix = uuid.uuid4().hex
        self._undelivered_at_close = 0
        self._drain_now = False
        self._last_drain = time.monotonic()
        self._gave_up = False

    # -- for the owner ------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; a second call does nothing."""
        if self._thread is None:
            self._thread = start_thread(self._run, "mlbench-dispatcher")

    @property
    def started(self) -> bool:
        """Whether the thread was started (in this process)."""
        return self._thread is not None

    def wake(self) -> None:
        """Ask the thread to deliver now."""
        self._wake_event.set()

    def count_dropped(self, reason: str, records: int) -> None:
        """Count records lost outside the thread's sight (the spool's size bound)."""
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + records
        self._warn_once(f"drop:{reason}", f"mlbench-metrics: dropped {records} records ({reason})")

    def trim(self) -> None:
        """Called from the training thread when the buffer holds ``max_buffer`` records.

        Moves the oldest records out of the buffer in one piece, for the thread to park
        on disk (or drop and count); O(batch_size), no I/O, never blocks. When the thread
        has not even taken the previous overflow (it is starved or stuck), the piece is
        dropped here and counted: memory stays under twice ``max_buffer`` whatever happens.
        In durable mode the records are on disk already, so the piece is always kept.
        """
        with self._drain_lock:
            excess = min(len(self.buffer), len(self.buffer) - self._max_buffer + self._batch_size)
            popleft = self.buffer.popleft
            chunk = [popleft() for _ in range(max(0, excess))]
            markers = [r for r in chunk if type(r) is _Marker] if self._markers_waiting else []
            self._markers_waiting -= len(markers)
        if not chunk:
            return
        with self._lock:
            durable = self.store is not None and self.store.durable
            if durable or self._overflow_records + len(chunk) <= self._max_buffer:
                self._overflow_records += len(chunk)
                self._overflow.append(chunk)
            else:
                dropped = len(chunk) - len(markers)
                self._dropped["overflow"] = self._dropped.get("overflow", 0) + dropped
                self._taken += dropped
                self._trim_drops += dropped
                if markers:
                    self._overflow.append(markers)
        self._wake_event.set()

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything logged before the call is stored.

        Returns:
            True when every record logged since the previous flush (and before this
            call) is stored; False when time ran out or records were dropped.
        """
        if self._thread is None or not self._thread.is_alive():
            return not self.buffer and not self._outbox and not self._in_flight
        marker = _Marker()
        with self._drain_lock:
            self.buffer.append(marker)
            self._markers_waiting += 1
        self._drain_now = True
        self._wake_event.set()
        return marker.event.wait(timeout) and marker.ok

    def close(self, timeout: float) -> int:
        """Deliver what is left until ``timeout`` runs out, then stop the thread.

        What is still undelivered at the deadline is parked on disk (for ``sync``), or
        counted as dropped (``"shutdown"``). Returns the number of records not delivered.
        """
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._stopping.set()
        self._wake_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(max(0.0, timeout) + 1.0)
        if not self._gave_up:
            # Never started (nothing was logged in this process) or gone: nothing can be
            # sent from here without starting a thread, so park or count what is left.
            self._take_overflow()
            self._take_buffer()
            self._give_up()
        return self._undelivered_at_close

    def after_fork_in_child(self, store: Any = None) -> None:
        """Forget the parent's records, thread and store; the owner starts a thread on demand."""
        self.buffer.clear()
        self.store = store
        self._init_state()

    def stats(self) -> Stats:
        """A snapshot of the counters."""
        with self._lock:
            in_flight = sum(len(b) for b in self._in_flight.values())
            waiting = sum(len(b) for b in self._outbox) + self._overflow_records
            buffered = len(self.buffer)  # (a flush marker in it counts as one)
            return Stats(
                logged=self._taken + buffered + self._overflow_records,
                stored=self._stored,
                retried=self._retried,
                dropped=dict(self._dropped),
                spooled=self._spooled,
                in_flight=in_flight,
                pending=buffered + waiting,
                last_error=self._last_error,
            )

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake_event.wait(self._next_wait())
            self._wake_event.clear()
            try:
                self._cycle()
            except Exception as exc:  # never let the thread die silently
                self._note_error("dispatcher", exc)
                _log.exception("mlbench-metrics: the dispatcher failed; it keeps going")
            if self._stopping.is_set() and (self._all_done() or time.monotonic() >= self._deadline):
                self._give_up()
                return

    def _next_wait(self) -> float:
        now = time.monotonic()
        if self._stopping.is_set():
            return max(0.0, min(0.05, self._deadline - now))
        wait = max(0.0, self._last_drain + self._flush_interval - now)
        if self._outbox and len(self._in_flight) < self._max_in_flight:
            wait = min(wait, max(0.0, self._outbox[0].due - now))
        return wait

    def _all_done(self) -> bool:
        return not self.buffer and not self._overflow and not self._outbox and not self._in_flight

    def _cycle(self) -> None:
        self._settle()
        self._take_overflow()
        # Take the buffer only when a batch is full, the interval is up, a flush asks, or
        # we are stopping: a wake-up for an answered batch alone must not cut the buffer
        # into small batches (each costs a request).
        now = time.monotonic()
        if (
            self._drain_now
            or len(self.buffer) >= self._batch_size
            or now - self._last_drain >= self._flush_interval
            or self._stopping.is_set()
        ):
            self._drain_now = False
            self._last_drain = now
            self._take_buffer()
        self._send()
        self._settle()

    def _take_overflow(self) -> None:
        while self._overflow:
            with self._lock:
                chunk = self._overflow.popleft()
                self._overflow_records -= len(chunk)
                self._taken += sum(1 for r in chunk if type(r) is not _Marker)
            for records, first, count in self._pieces([r for r in chunk if type(r) is not _Marker]):
                item = self._new_batch(records, first, count)
                self._outbox.append(item)
                self._park(item, "overflow")
            for marker in (r for r in chunk if type(r) is _Marker):  # cut out by the trim
                self._add_marker(marker)

    def _take_buffer(self) -> None:
        with self._drain_lock:  # trim() is the only other consumer
            n = len(self.buffer)
            if not n:
                return
            popleft = self.buffer.popleft
            items = [popleft() for _ in range(n)]
            markers = self._markers_waiting
            self._markers_waiting = 0
        if not markers:  # the common case: records only
            self._cut(items)
        else:
            records: list[Any] = []
            for item in items:
                if type(item) is _Marker:
                    self._cut(records)
                    records = []
                    self._add_marker(item)
                else:
                    records.append(item)
            self._cut(records)
        if self._on_drained is not None:
            self._on_drained()

    def _cut(self, records: list[Any]) -> None:
        """Queue ``records`` (taken from the buffer, in its order) as batches."""
        if not records:
            return
        with self._lock:
            self._taken += len(records)
        for piece, first, count in self._pieces(records):
            self._outbox.append(self._new_batch(piece, first, count))
            self._bound_memory()

    def _pieces(self, records: list[Any]) -> Iterator[tuple[list[Any] | None, int, int]]:
        """``records`` cut into batches of at most ``batch_size``: (records, first, count).

        In durable mode ``records`` are slot numbers and a batch is a range of
        consecutive slots (its id and its marks name the range; its records are read
        back from the log when it is sent): in queue order when that is consecutive
        (the common case, checked at C speed), else sorted and split where numbers jump
        (threads that queued out of turn).
        """
        size = self._batch_size
        if self.store is None or not self.store.durable:
            for start in range(0, len(records), size):
                piece = records[start : start + size]
                yield piece, 0, len(piece)
            return
        first = records[0]
        if records == list(range(first, first + len(records))):
            runs = [(first, len(records))]
        else:
            records = sorted(records)
            runs, start = [], 0
            for i in range(1, len(records) + 1):
                if i == len(records) or records[i] != records[i - 1] + 1:
                    runs.append((records[start], i - start))
                    start = i
        for first, count in runs:
            self._note_taken(first, first + count)
            for start in range(0, count, size):
                yield None, first + start, min(size, count - start)

    def _note_taken(self, first: int, end: int) -> None:
        """Durable: slots ``first..end-1`` are in batches; move the untaken mark past them."""
        if first != self._untaken:
            self._taken_ahead[first] = end
            return
        while end in self._taken_ahead:
            end = self._taken_ahead.pop(end)
        self._untaken = end

    def _new_batch(self, records: list[Any] | None, first: int, count: int) -> _Batch:
        seq = self._seq
        self._seq += 1
        end = first + count
        store = self.store
        batch_id = store.batch_id(first, end) if store is not None else None
        if batch_id is not None:
            store.cut(first, end)  # marked on disk before it can be sent
        return _Batch(seq, batch_id or f"{self._batch_prefix}-{seq}", first, records, count)

    def _add_marker(self, marker: _Marker) -> None:
        marker.upto = self._seq - 1
        if self._trim_drops != self._trim_drops_seen:  # records dropped before they had a batch
            self._trim_drops_seen = self._trim_drops
            marker.clean = False
        self._markers.append((self._last_marker_upto, marker))
        self._last_marker_upto = marker.upto

    def _bound_memory(self) -> None:
        """Keep batches in memory under ``max_buffer`` records: park (or drop) the oldest."""
        if len(self._outbox) * self._batch_size <= self._max_buffer:
            return  # cannot be over: skip the count
        held = sum(len(b) for b in self._outbox if b.in_memory) + sum(len(b) for b in self._in_flight.values())
        for item in list(self._outbox)[:-1]:
            if held <= self._max_buffer:
                return
            if item.in_memory:
                held -= len(item)
                self._park(item, "overflow")  # (dropped and taken out of the queue when it cannot be)

    def _park(self, item: _Batch, reason: str) -> bool:
        """Put a batch on disk (it stays queued, without its records in memory).

        Without a store, or when the store fails, the batch is dropped, counted under
        ``reason`` and taken out of the queue; returns False then.
        """
        if item.handle is not None:
            item.release()
            return True
        store = self.store
        if store is not None:
            try:
                item.handle = store.park(item.encoded()) if not store.durable else True
                item.release()
                with self._lock:
                    self._spooled += len(item)
                return True
            except Exception as exc:
                self._note_error("spool", exc)
                reason = "spool_failed"
        self._drop(item, reason)
        return False

    def _drop(self, item: _Batch, reason: str) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + len(item)
        self._lost_seqs.append(item.seq)
        if item in self._outbox:
            self._outbox.remove(item)
        self._warn_once(f"drop:{reason}", f"mlbench-metrics: dropped {len(item)} records ({reason})")

    def _send(self) -> None:
        now = time.monotonic()
        stopping = self._stopping.is_set()
        while self._outbox and len(self._in_flight) < self._max_in_flight:
            head = self._outbox[0]
            if head.due > now and not stopping:
                return
            if stopping and now >= self._deadline:
                return
            if not head.in_memory and not self._reload(head):
                continue
            self._outbox.popleft()
            try:
                future = self._deliver(head.encoded())
            except ClosedError:
                self._outbox.appendleft(head)
                return
            except Exception as exc:  # the client refused the batch itself: nothing can fix it
                self._note_error("deliver", exc)
                self._drop(head, "rejected")
                continue
            head.attempts += 1
            with self._lock:
                self._in_flight[head.seq] = head
            future.add_done_callback(functools.partial(self._on_done, head))

    def _reload(self, item: _Batch) -> bool:
        """Bring a parked batch back from disk to send it; False (and dropped) if it is gone."""
        store = self.store
        try:
            batch = store.reload(item.handle, item.first, item.first + item.count, item.batch_id)
        except Exception as exc:
            self._note_error("spool", exc)
            batch = None
        if batch is None:
            self._drop(item, "spool_failed" if store is not None and not store.durable else "spool_full")
            return False
        if len(batch) < item.count:  # durable: part of the range was deleted by the size bound
            self.count_dropped("spool_full", item.count - len(batch))
        batch.batch_id = item.batch_id
        item.set_encoded(batch)
        return True

    def _on_done(self, item: _Batch, future: Future[BatchResult]) -> None:
        """Runs on a client thread: hand the answer over and wake the dispatcher."""
        self._completed.append((item, future))
        self._wake_event.set()

    def _settle(self) -> None:
        """Account for answered batches, re-queue what may succeed later, resolve markers."""
        retry: list[_Batch] = []
        settled = False
        while self._completed:
            settled = True
            item, future = self._completed.popleft()
            with self._lock:
                self._in_flight.pop(item.seq, None)
            try:
                result = future.result()
            except BaseException as exc:  # the client failed in an unexpected way: keep the batch
                self._note_error("deliver", exc)
                retry.append(item)
                continue
            stored = result.total - len(result.failed) if result.duplicate else result.stored
            with self._lock:
                self._stored += stored
            if not result.failed:
                self._delivered(item)
                continue
            self._note_error("deliver", result.error)
            again = result.retryable()
            rejected = result.rejected()
            if rejected:
                with self._lock:
                    self._dropped["rejected"] = self._dropped.get("rejected", 0) + len(rejected)
                self._lost_seqs.append(item.seq)
                self._warn_once(
                    "rejected", f"mlbench-metrics: the server refused {len(rejected)} records: {result.error}"
                )
            if not again:
                self._delivered(item)  # done with it, one way or the other
                continue
            if len(again) < len(item):  # fan-out: only some single posts failed
                subset = item.encoded().subset(again)
                subset.batch_id = f"{item.batch_id}-r{item.attempts}"
                item.set_encoded(subset)
            retry.append(item)
        now = time.monotonic()
        for item in sorted(retry, key=lambda b: b.seq, reverse=True):
            item.due = now + min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** max(0, item.attempts - 1))
            with self._lock:
                self._retried += len(item)
            self._outbox.appendleft(item)  # oldest first, ahead of newer batches
            if self.store is not None and item.handle is None and not self.store.durable:
                self._park(item, "spool_failed")  # a failed batch goes to the spool at once
        if settled:
            self._advance_watermark()
        self._resolve_markers()

    def _delivered(self, item: _Batch) -> None:
        if self.store is not None:
            try:
                self.store.delivered(item.handle, item.first)
            except Exception as exc:
                self._note_error("spool", exc)

    def _advance_watermark(self) -> None:
        """Durable mode: everything before the oldest undelivered record is delivered."""
        store = self.store
        if store is None or not store.durable:
            return
        firsts = [b.first for b in self._outbox] + [b.first for b in self._in_flight.values()]
        store.set_watermark(min([self._untaken, *firsts]))

    def _resolve_markers(self) -> None:
        if not self._markers:
            return
        pending = [b.seq for b in self._outbox] + list(self._in_flight)
        oldest = min(pending) if pending else self._seq
        keep = []
        for lo, marker in self._markers:
            if marker.upto < oldest:
                marker.ok = marker.clean and not any(lo < s <= marker.upto for s in self._lost_seqs)
                marker.event.set()
            else:
                keep.append((lo, marker))
        self._markers = keep

    def _give_up(self) -> None:
        """At the end: park (or count) what is left, release every waiting flush."""
        self._gave_up = True
        self._take_overflow()
        leftovers = list(self._outbox) + list(self._in_flight.values())
        with self._lock:
            self._in_flight.clear()
        undelivered = sum(len(b) for b in leftovers)
        self._outbox = collections.deque(leftovers)
        for item in leftovers:
            self._park(item, "shutdown")
        self._undelivered_at_close = undelivered
        self._advance_watermark()
        if self.store is not None:
            try:
                self.store.finish(everything_delivered=not undelivered)
            except Exception as exc:
                self._note_error("spool", exc)
        for _, marker in self._markers:
            marker.ok = False
            marker.event.set()
        self._markers = []
        if undelivered and self.store is not None and self.store.dir.created:
            _log.warning(
                "mlbench-metrics: %d records wait in %s; deliver them with: mlbench-metrics sync %s",
                undelivered,
                self.store.dir.path,
                self.store.dir.path,
            )

    # -- errors -------------------------------------------------------------------------

    def _note_error(self, kind: str, exc: BaseException | None) -> None:
        if exc is None:
            return
        text = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._last_error = text
        self._warn_once(f"{kind}:{type(exc).__name__}", f"mlbench-metrics: {kind} failed: {text}")

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._error_kinds:
            self._error_kinds.add(key)
            _log.warning(message)
