"""Durable mode's stores: the buffer is the log.

The training thread writes each record into a slot of the :class:`DurableLog` before
``log()`` returns and queues only the slot's number; batches are ranges of slots, marked
in the log before they are sent, read back just before sending, and marked delivered
after. That slot bookkeeping (which ranges are cut, which delivered, how far the
delivered watermark may move) is :class:`RangeStore`'s alone; the dispatcher only sees
parcels. :class:`DurableStore` is it with the training thread's writer, for a
dispatcher in the same process; an agent process delivers the same log through
``tail.py``'s store, and then the writer queues nothing (``shared=True``).

When the log cannot grow (the disk is full, the dictionary cannot be written) the store
says so once and takes the records that follow in memory, as a spool-less logger would:
training goes on and the records are still delivered while the server answers. No
threads are started here.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Final

from ...delivery import MemoryStore, Parcel, next_batch_id
from ...delivery.reasons import DropReason
from ...errors import SpoolError
from ...records import Context, MetricBatch, encode_columns
from ...records.batch import Record
from ...records.checks import Value
from ..files import SpoolDir
from .layout import (
    FLAG_CUMULATIVE,
    FLAG_STEP,
    KIND_FLOAT,
    KIND_INT,
    KIND_STR,
    NO_STEP,
    SLOT,
    SLOT_F,
    SLOT_I,
)
from .log import DurableLog
from .mapped import SharedLog

__all__ = ["DurableStore", "RangeStore", "Writer"]

_log = logging.getLogger("mlbench_metrics")

Writer = Callable[[str, Value, int, "int | None", Context], None]
"""What ``log()`` calls in durable mode: (name, value, time_ns, step, context)."""

_deque_append: Final = collections.deque.append
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class _Range:
    """A durable parcel's place: slots ``first..end-1``; once loaded, the slots it holds."""

    __slots__ = ("end", "first", "seqs")

    def __init__(self, first: int, end: int) -> None:
        self.first = first
        self.end = end
        self.seqs: list[int] = []


class RangeStore(MemoryStore):
    """A durable log's slots as a :class:`~mlbench_metrics.delivery.BatchStore`.

    Slot numbers in the buffer become ranges; tuples (records a frozen log could not
    take) become batches in memory, as :class:`MemoryStore` makes them.

    Args:
        log: the log the slots are in.
        prefix: the batch-id prefix for records kept in memory.
        first: every slot below it is settled already.
    """

    def __init__(self, log: SharedLog, prefix: str, first: int = 0) -> None:
        super().__init__(prefix)
        self.log = log
        self._lock = threading.Lock()
        self._untaken = first  # every slot below this one is in a batch already
        self._taken_ahead: dict[int, int] = {}  # slot ranges in batches beyond it
        self._outstanding: dict[int, int] = {}  # first -> end of ranges cut and not settled

    def cut(self, items: list[object], size: int, seq: int) -> list[Parcel]:
        """Slot numbers become ranges of consecutive slots (marked in the log before they
        can be sent); records taken in memory become batches of their own."""
        slots = [i for i in items if type(i) is int]
        parcels = super().cut([i for i in items if type(i) is not int], size, seq) if len(slots) < len(items) else []
        seq += len(parcels)
        for first, count in _runs(slots):
            self._note_taken(first, first + count)
            for start, end in self._ranges(first, first + count, size):
                self.log.mark_batch(start, end)
                with self._lock:
                    self._outstanding[start] = end
                parcels.append(Parcel(seq, self.log.batch_id(start, end), end - start, place=_Range(start, end)))
                seq += 1
        return parcels

    def _ranges(self, first: int, end: int, size: int) -> list[tuple[int, int]]:
        """How slots ``first..end-1`` are cut into batches: ``size`` at a time."""
        return [(start, min(end, start + size)) for start in range(first, end, size)]

    def load(self, parcel: Parcel) -> MetricBatch | None:
        """Read the range back from the log and encode it (None if none of it is left)."""
        place = parcel.place
        if not isinstance(place, _Range):
            return super().load(parcel)
        self.log.prepare(place.end)  # here, in the dispatcher thread, outside the buffer's lock
        if parcel.batch is None:
            names, values, times, steps, contexts, place.seqs = self.log.read(place.first, place.end)
            if names:
                parcel.batch = encode_columns(names, values, times, steps, contexts, parcel.batch_id)
        return parcel.batch

    def failed(self, parcel: Parcel) -> None:
        """On disk already: only forget the encoded copy."""
        if isinstance(parcel.place, _Range):
            parcel.batch = None

    def remainder(self, parcel: Parcel, keep: list[int]) -> None:
        """Mark the slots not kept done, so no replay sends them again."""
        place = parcel.place
        if not isinstance(place, _Range):
            super().remainder(parcel, keep)
            return
        batch = self.load(parcel)
        assert batch is not None
        kept = set(keep)
        self.log.mark_done([s for i, s in enumerate(place.seqs) if i not in kept])
        place.seqs = [place.seqs[i] for i in keep]
        parcel.batch = batch.subset(keep)
        parcel.batch.batch_id = parcel.batch_id = next_batch_id(parcel.batch_id)

    def settle(self, parcel: Parcel) -> None:
        """Mark the range delivered; move the watermark past what is all delivered."""
        place = parcel.place
        parcel.batch = None
        if not isinstance(place, _Range):
            return
        self._settling(place.first, place.end)
        self.log.mark_delivered(place.first)
        with self._lock:
            self._outstanding.pop(place.first, None)
        self.log.set_watermark(self.settled_below())

    def _settling(self, first: int, end: int) -> None:
        """Slots ``first..end-1`` are about to be marked delivered (their records are
        counted already)."""

    def settled_below(self) -> int:
        """Every slot below this one is settled (the delivered watermark)."""
        with self._lock:
            return min(min(self._outstanding, default=self._untaken), self._untaken)

    def lost(self, parcel: Parcel) -> tuple[int, DropReason | None]:
        """Slots of the range the size bound deleted."""
        place = parcel.place
        if isinstance(place, _Range):
            return self.log.missing(place.first, place.end), DropReason.SPOOL_FULL
        return 0, DropReason.SPOOL_FULL

    def deletions(self) -> int:
        """Segments the size bound deleted so far."""
        return self.log.deletions

    def close(self, everything_settled: bool) -> None:
        """Unmap the log."""
        self.log.close()

    def _note_taken(self, first: int, end: int) -> None:
        """Slots ``first..end-1`` are in batches; move the untaken mark past them."""
        with self._lock:
            if first != self._untaken:
                self._taken_ahead[first] = end
                return
            while end in self._taken_ahead:
                end = self._taken_ahead.pop(end)
            self._untaken = end


class DurableStore(RangeStore):
    """A :class:`DurableLog` and its writer, as a store.

    Args:
        directory: the writer's directory (created now, with the first segment).
        max_bytes: the log's size bound.
        prefix: the batch-id prefix for records taken in memory after the log froze.
        on_frozen: told (once) that the log stopped growing: :attr:`write` no longer
            writes, and records should be appended to :attr:`buffer` as tuples.
        shared: another process (an agent) delivers the log: the writer queues no slot
            numbers, and the directory is never removed here.

    Raises:
        SpoolError: the directory or the first segment cannot be created.
    """

    log: DurableLog

    def __init__(
        self, directory: SpoolDir, max_bytes: int, prefix: str, on_frozen: Callable[[], None], *, shared: bool = False
    ) -> None:
        super().__init__(DurableLog(directory, max_bytes), prefix)
        self.dir = directory
        self.shared = shared
        self._on_frozen = on_frozen
        self.frozen = False
        self._unwritten: int | None = None  # the first slot taken and never written
        self._next = itertools.count()
        # Slot numbers for a dispatcher here; an agent finds them in the log itself.
        self.write: Writer = _writer(self, None if shared else self.buffer, self._next)

    @property
    def location(self) -> Path | None:
        """The writer directory."""
        return self.dir.path

    def append(self, record: Record) -> None:
        """Write a whole record tuple (``increment``, timers, ``log_many``)."""
        self.write(*record)

    def freeze(self, error: SpoolError) -> None:
        """The log cannot grow: say so once; from now on records are kept in memory."""
        with self._lock:
            if self.frozen:
                return
            self.frozen = True
        _log.warning("mlbench-metrics: %s; records from now on are kept in memory only", error)
        self._on_frozen()

    def unwritten(self, seq: int) -> None:
        """Slot ``seq`` was taken but cannot be written (its segment could not be made)."""
        with self._lock:
            self._unwritten = seq if self._unwritten is None else min(seq, self._unwritten)

    def end(self) -> int:
        """How many slots the log holds or will hold: those taken so far, up to the
        first that could not be written (each below it is, or is being, written)."""
        taken = int(repr(self._next)[6:-1])  # itertools.count's repr is "count(<next>)"
        with self._lock:
            return taken if self._unwritten is None else min(taken, self._unwritten)

    def close(self, everything_settled: bool) -> None:
        """Unmap the log; remove the directory when everything was delivered here."""
        self.log.close()
        self.dir.release(remove=everything_settled and not self.shared)


def _runs(slots: list[int]) -> list[tuple[int, int]]:
    """``slots`` as runs of consecutive numbers: in queue order when that is consecutive
    (the common case, checked at C speed), else sorted and split where numbers jump
    (threads that queued out of turn)."""
    if not slots:
        return []
    first = slots[0]
    if slots == list(range(first, first + len(slots))):
        return [(first, len(slots))]
    slots = sorted(slots)
    runs, start = [], 0
    for i in range(1, len(slots) + 1):
        if i == len(slots) or slots[i] != slots[i - 1] + 1:
            runs.append((slots[start], i - start))
            start = i
    return runs


def _writer(store: DurableStore, slots: collections.deque[object] | None, counter: itertools.count[int]) -> Writer:
    """The hot path: a closure, so its state is in cells (the fastest variables Python
    has) and only the first use of a name, a context or a segment takes a slow path.

    It takes the record's slot number from an ``itertools.count`` (atomic under the GIL,
    so no lock), writes and commits the slot in one ``pack_into`` before it returns (a
    kill after that cannot lose it), and queues only the number: the dispatcher reads
    the records back when it sends them, and memory holds no record object the garbage
    collector would walk. Threads may queue in a slightly different order than they
    numbered; the store batches by slot number, not queue order. With no ``slots`` (an
    agent process delivers, finding the slots in the log) nothing is queued. Records the
    log cannot take go to ``store.buffer`` as tuples.
    """
    log = store.log
    buffer = store.buffer
    names: dict[str, int] = {}
    contexts: dict[int, tuple[int, int]] = {}  # id(ctx) -> (context id, flags)
    last: tuple[object, tuple[int, int]] = (None, (0, 0))  # the last context seen
    newest: tuple[Any, int, int] = (None, 0, 0)  # the newest segment: (map, first, end)
    next_seq = counter.__next__
    pack_float, pack_int = SLOT_F.pack_into, SLOT_I.pack_into

    frozen = False  # the log stopped growing: records go to memory (store.frozen, in a cell)
    enqueue = slots.append if slots is not None else None

    def in_memory(record: Record, error: SpoolError) -> None:
        nonlocal frozen
        _deque_append(buffer, record)
        frozen = True
        store.freeze(error)

    def context(ctx: Context) -> tuple[int, int]:
        nonlocal last
        known = contexts.get(id(ctx))
        if known is None:
            known = contexts[id(ctx)] = (log.context_id(ctx), FLAG_CUMULATIVE if ctx.cumulative else 0)
        last = (ctx, known)
        return known

    def segment(seq: int) -> tuple[Any, int]:
        nonlocal newest
        try:
            mm, first, end = log.segment_for(seq)
        except SpoolError:
            store.unwritten(seq)  # taken, never written: where the log ends
            raise
        if end > newest[2]:
            newest = (mm, first, end)
        return mm, first

    def write(name: str, value: Value, time_ns: int, step: int | None, ctx: Context) -> None:
        """Persist one record, then queue its slot number.

        Raises:
            ValueError: ``step`` does not fit 64 bits (nothing is written then).
        """
        if step is None:
            flag_step, raw_step = 0, NO_STEP
        elif _I64_MIN < step <= _I64_MAX:
            flag_step, raw_step = FLAG_STEP, step
        else:
            raise ValueError(f"step {step} does not fit 64 bits (durable mode stores it in one)")
        if frozen:
            _deque_append(buffer, (name, value, time_ns, step, ctx))
            return
        try:
            nid = names.get(name)
            if nid is None:
                nid = names[name] = log.name_id(name)
            seen = last
            context_id, flags = seen[1] if ctx is seen[0] else context(ctx)
            vtype = type(value)
            if vtype is float:
                pack, kind, raw = pack_float, KIND_FLOAT, value
            elif vtype is int and _I64_MIN <= value <= _I64_MAX:  # type: ignore[operator]
                pack, kind, raw = pack_int, KIND_INT, value
            else:  # a string, or an integer beyond 64 bits
                pack, kind, raw = pack_int, KIND_STR, log.string_id(str(value))
            # Everything that can fail has, but the segment; from here the slot is taken.
            seq = next_seq()
            mm, first, end = newest
            if not first <= seq < end:
                mm, first = segment(seq)
        except SpoolError as error:
            in_memory((name, value, time_ns, step, ctx), error)
            return
        pack(mm, (seq - first) * SLOT, raw, time_ns, raw_step, nid, context_id, kind, flags | flag_step, seq + 1)
        if enqueue is not None:
            enqueue(seq)

    return write
