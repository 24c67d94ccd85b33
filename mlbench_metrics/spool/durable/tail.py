"""Delivering a durable log from another process, while its writer goes on writing.

A delivery agent (``mlbench_metrics.agent``) maps the writer's files with a
:class:`TailLog` and delivers them through a :class:`TailStore`, the same store a
dispatcher in the writer's own process uses (:class:`~.store.RangeStore`), plus:

* **tailing**: :meth:`TailStore.feed` queues the slot numbers the writer has committed
  since the last call (a committed slot's commit word is its number + 1, written last);
  a slot taken and not written yet is waited for while the writer lives (another of its
  threads is filling it), and skipped once nothing more will be written, or after
  :data:`GAP_TIMEOUT` when later slots are written (a ``log()`` interrupted halfway);
* **taking over**: an agent started after another died goes on from the log's marks: the
  ranges its predecessor delivered are skipped, and those it marked but did not finish
  are sent again whole, under the same batch ids, so the embedded server stores each
  once; a range it had counted and not yet marked (the status area's *pending*) is
  marked now.

No threads.
"""

from __future__ import annotations

import json
import mmap
import os
import time
from pathlib import Path
from typing import Any, Callable, Final, TypeVar

from ...delivery import Parcel
from ...delivery.reasons import DropReason
from ...errors import SpoolError
from ...records import Context, MetricBatch
from ..files import HEADER_SIZE, read_frames
from . import layout
from .layout import COMMIT_AT, CONTROL_AT, CTL_DELIVERED, END_BIT, GAP_WINDOW, SLOT, START_BIT, STATE, segment_name
from .mapped import Columns, Segment, SharedLog
from .range_store import RangeStore

__all__ = ["GAP_TIMEOUT", "TailLog", "TailStore"]

GAP_TIMEOUT: Final = 5.0
"""Seconds a slot may stay unwritten while later ones are written before it is skipped."""

_CHUNK: Final = 65_536  # slots looked at per step: a 3 MiB copy at most
_PROBE: Final = 256  # the first look


class TailLog(SharedLog):
    """A live writer's durable log, mapped by the process that delivers it.

    Segments are mapped as the writer makes them; the dictionary is read as it grows.

    Args:
        path: the writer directory (its ``state.bin`` must exist).

    Raises:
        SpoolError: ``state.bin`` is missing or not a durable log's.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, path.name)
        try:
            self._state_fd = os.open(path / "state.bin", os.O_RDWR)
            if os.fstat(self._state_fd).st_size < STATE.size:
                raise SpoolError(f"{path / 'state.bin'} is too short")
            self._state = mmap.mmap(self._state_fd, mmap.PAGESIZE)
        except OSError as exc:
            raise SpoolError(f"cannot open the durable log in {path}: {exc}") from exc
        self.watermark = self.shared_watermark()
        self._dict_fd = -1
        self._dict_offset = 0
        self._holes: set[tuple[str, int]] = set()  # dictionary ids whose entry was damaged
        self.refresh()
        for seg_path in path.glob("seg-*.bin"):  # spent: its deleter died before it could
            if layout.segment_first(seg_path.name) + layout.SEGMENT_SLOTS <= self.watermark:
                seg_path.unlink(missing_ok=True)

    def batched_end(self) -> int:
        """The slot after the last one any deliverer put in a batch."""
        return int(STATE.unpack_from(self._state, 0)[2]) if self._state is not None else 0

    # -- the dictionary ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the dictionary entries written since the last call (a frame the writer is
        still writing is read next time; entries are keyed by id, so reading one again
        changes nothing)."""
        with self._lock:
            if self._dict_fd < 0:
                try:
                    self._dict_fd = os.open(self.path / "dict.log", os.O_RDONLY)
                except OSError:
                    return
            size = os.fstat(self._dict_fd).st_size
            if size <= self._dict_offset:
                return
            data = os.pread(self._dict_fd, size - self._dict_offset, self._dict_offset)
            consumed = 0
            for item in read_frames(data):
                if item.problem == "torn":
                    break
                if item.payload is None:
                    continue
                consumed = item.offset + HEADER_SIZE + len(item.payload)
                try:
                    self._enter(json.loads(item.payload))
                except (ValueError, KeyError, TypeError):
                    pass  # its ids stay holes: records that refer to them cannot be sent
            self._dict_offset += consumed

    def _enter(self, entry: dict[str, Any]) -> None:
        if "n" in entry:
            _put(self._names_by_id, int(entry["n"]), str(entry["v"]), "", self._holes, "n")
        elif "c" in entry:
            step = entry.get("step")
            ctx = Context(
                entry.get("rank"),
                int(entry.get("epoch", 0)),
                None if step is None else int(step),
                bool(entry.get("cum")),
                str(entry.get("extra", "")),
            )
            _put(self._context_refs, int(entry["c"]), ctx, _NO_CONTEXT, self._holes, "c")
        elif "s" in entry:
            self._strings[int(entry["s"])] = str(entry["v"])

    def read(self, first: int, end: int) -> Columns:
        """As :meth:`SharedLog.read`, with the dictionary brought up to date first.

        Raises:
            SpoolError: records refer to dictionary entries that are damaged.
        """
        self.refresh()
        try:
            columns = super().read(first, end)
        except IndexError:
            raise SpoolError(f"{self.path / 'dict.log'} lacks entries records {first}..{end - 1} need") from None
        if self._holes and (_NO_CONTEXT in columns.contexts or "" in columns.names):
            raise SpoolError(f"{self.path / 'dict.log'} has damaged entries records {first}..{end - 1} need")
        return columns

    # -- segments and slots -----------------------------------------------------------------

    def segment(self, seq: int) -> Segment | None:
        """The segment holding slot ``seq``, mapped now if need be; None when its file does
        not exist (not made yet, or deleted) or is not fully reserved yet."""
        with self._lock:
            for segment in self._segments:
                if segment.first <= seq < segment.end:
                    return segment
            first = seq - seq % layout.SEGMENT_SLOTS
            path = self.path / segment_name(first)
            size = layout.SEGMENT_SLOTS * SLOT
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError:
                return None
            try:
                if os.fstat(fd).st_size < size:  # being reserved: mapping it now could SIGBUS
                    os.close(fd)
                    return None
                segment = Segment(first, path, mmap.mmap(fd, size), fd)
            except OSError:
                os.close(fd)
                return None
            self._segments.append(segment)
            self._segments.sort(key=lambda s: s.first)
            return segment

    def later_segment(self, seq: int) -> bool:
        """Whether a segment after the one for slot ``seq`` exists (so that one is gone)."""
        first = seq - seq % layout.SEGMENT_SLOTS
        return any(layout.segment_first(p.name) > first for p in self.path.glob("seg-*.bin"))

    def committed(self, first: int, stop: int, *, prefix: bool = True) -> int:
        """How many slots from ``first`` on (up to ``stop``, within one segment) are
        committed; with ``prefix=False``, the offset of the first committed one
        (``stop - first`` when none is)."""
        segment = self.segment(first)
        if segment is None or stop <= first:
            return 0
        stop = min(stop, segment.end)
        lo = (first - segment.first) * SLOT
        data = segment.mm[lo : (stop - segment.first) * SLOT]
        commits = memoryview(data).cast("Q")[COMMIT_AT // 8 :: SLOT // 8].tolist()
        expected = range(first + 1, stop + 1)
        if prefix:
            if commits == list(expected):
                return stop - first
            return next(i for i, (c, e) in enumerate(zip(commits, expected)) if c != e)
        return next((i for i, (c, e) in enumerate(zip(commits, expected)) if c == e), stop - first)

    def _close_files(self) -> None:
        if self._dict_fd >= 0:
            os.close(self._dict_fd)

    def controls(self, first: int, end: int) -> bytes:
        """The control bytes of slots ``first..end-1`` (zeros where no segment is)."""
        out = bytearray(end - first)
        seq = first
        while seq < end:
            stop = min(end, seq - seq % layout.SEGMENT_SLOTS + layout.SEGMENT_SLOTS)
            segment = self.segment(seq)
            if segment is not None:
                lo = (seq - segment.first) * SLOT
                out[seq - first : stop - first] = segment.mm[lo + CONTROL_AT : (stop - segment.first) * SLOT : SLOT]
            seq = stop
        return bytes(out)


_NO_CONTEXT: Final = Context(None, 0, None, False, "\x00damaged")
_T = TypeVar("_T")


def _put(table: list[_T], index: int, value: _T, hole: _T, holes: set[tuple[str, int]], kind: str) -> None:
    """``table[index] = value``, padding the ids skipped (damaged entries) with ``hole``."""
    while len(table) < index:
        holes.add((kind, len(table)))
        table.append(hole)
    if index == len(table):
        table.append(value)
    else:
        table[index] = value
        holes.discard((kind, index))


class TailStore(RangeStore):
    """A :class:`TailLog` delivered while its writer lives (and after).

    Args:
        log: the log.
        prefix: batch-id prefix for what is kept in memory (nothing, here).
        pending: a range counted as settled by the previous agent but perhaps not
            marked yet (from the status area): it is marked now.
        on_settle: told each range, ``(first, end)``, before it is marked delivered,
            and ``None`` after.
        clock: monotonic seconds.
    """

    log: TailLog

    def __init__(
        self,
        log: TailLog,
        prefix: str,
        *,
        pending: tuple[int, int] | None = None,
        on_settle: Callable[[tuple[int, int] | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(log, prefix, first=log.watermark)
        self._on_settle = on_settle
        self._clock = clock
        self.cursor = log.watermark  # the next slot to queue
        self.skipped = 0  # slots taken by the writer and never written
        self.exhausted = False  # nothing more will be written, and everything is queued
        self._gap: tuple[int, float] | None = None
        self._probe = _PROBE
        self._failed_loads: set[int] = set()
        self._marked = self._marks(pending)  # (first, end, delivered), oldest first
        self._resend = {a: b for a, b, delivered in self._marked if not delivered}  # cut exactly so again

    @property
    def location(self) -> Path | None:
        """The writer directory."""
        return self.log.path

    def _marks(self, pending: tuple[int, int] | None) -> list[tuple[int, int, bool]]:
        """The ranges a previous agent cut after the watermark, and whether it delivered
        each; the pending one counts as delivered (and is marked so now)."""
        start, stop = self.log.watermark, self.log.batched_end()
        ranges = []
        if stop > start:
            controls = self.log.controls(start, stop)
            starts, ends = controls.translate(START_BIT), controls.translate(END_BIT)
            at = starts.find(1)
            while at >= 0:
                end = ends.find(2, at)
                end = len(controls) - 1 if end < 0 else end
                ranges.append((start + at, start + end + 1, bool(controls[at] & CTL_DELIVERED)))
                at = starts.find(1, end + 1)
        if pending is not None and pending[0] >= start:
            self.log.mark_delivered(pending[0])
            ranges = [r for r in ranges if r[0] != pending[0]] + [(pending[0], pending[1], True)]
        return sorted(ranges)

    # -- tailing ------------------------------------------------------------------------------

    def feed(self, limit: int, *, final: bool, end: int | None) -> int:
        """Queue up to ``limit`` slot numbers the writer has committed since the last call.

        Args:
            limit: the most to queue now.
            final: the writer writes nothing more (it closed, or died): unwritten slots
                are skipped, and at the end of the data :attr:`exhausted` is set.
            end: where the log ends, when the writer said so.

        Returns:
            How many slots were queued.
        """
        queued = 0
        while queued < limit and not self.exhausted:
            pos = self.cursor
            if end is not None and pos >= end:
                self.exhausted = final
                break
            while self._marked and self._marked[0][1] <= pos:
                self._marked.pop(0)
            if self._marked and self._marked[0][0] <= pos:
                first, stop, delivered = self._marked.pop(0)
                if delivered:
                    self._note_taken(first, stop)
                else:
                    self.buffer.extend(range(first, stop))  # whole, in one call: never split
                    queued += stop - first
                self.cursor = stop
                continue
            seg_end = pos - pos % layout.SEGMENT_SLOTS + layout.SEGMENT_SLOTS
            stop = min(seg_end, pos + min(_CHUNK, limit - queued), end if end is not None else seg_end)
            if self._marked:
                stop = min(stop, self._marked[0][0])
            if self.log.segment(pos) is None:
                if not (self.log.later_segment(pos) or (end is not None and end > pos)):
                    self.exhausted = final
                    break
                self.buffer.extend(range(pos, stop))  # deleted by the size bound: counted lost
                queued += stop - pos
                self.cursor = stop
                continue
            # Look at a window that doubles while it is all written: the cost of a look
            # follows what the writer wrote since the last, not the chunk's size.
            window = min(stop, pos + self._probe)
            n = self.log.committed(pos, window)
            if n:
                self._gap = None
                self.buffer.extend(range(pos, pos + n))
                queued += n
                self.cursor = pos + n
                if n < window - pos:
                    self._probe = max(_PROBE, 2 * n)
                    break  # caught up with the writer
                self._probe = min(_CHUNK, 2 * self._probe)
            elif not self._skip_gap(pos, seg_end, final=final, end=end):
                break
        return queued

    def _skip_gap(self, pos: int, seg_end: int, *, final: bool, end: int | None) -> bool:
        """Slot ``pos`` is not written: skip it (True) when it never will be."""
        if not final:
            # Mostly the writer has not got there yet; a later slot written before it is
            # another thread of the writer filling it, or (after GAP_TIMEOUT) a log()
            # interrupted between taking the slot and writing it. Looking ahead costs a
            # copy of the window, so it is done only once the cursor stood that long.
            now = self._clock()
            if self._gap is None or self._gap[0] != pos:
                self._gap = (pos, now)
            if now - self._gap[1] < GAP_TIMEOUT:
                return False
            self._gap = (pos, now)
        window = min(seg_end, pos + GAP_WINDOW, end if end is not None else seg_end)
        ahead = self.log.committed(pos, window, prefix=False)  # to the next written slot
        if final and end is not None:  # the writer said where it ends: nothing below is coming
            skip = ahead
        elif pos + ahead < window:  # later slots are written
            skip = ahead if final else 1
        elif final and self.log.later_segment(pos):
            skip = seg_end - pos  # the rest of this segment was never written
        else:
            self.exhausted = final
            return False
        self._note_taken(pos, pos + skip)
        self.skipped += skip
        self.cursor = pos + skip
        return True

    # -- the store ----------------------------------------------------------------------------

    def _ranges(self, first: int, end: int, size: int) -> list[tuple[int, int]]:
        """Batches of ``size``, except the ranges a previous agent cut: exactly as it did."""
        if not self._resend:
            return super()._ranges(first, end, size)
        out = []
        pos = first
        while pos < end:
            stop = self._resend.pop(pos, None)
            if stop is None:
                ahead = [a for a in self._resend if pos < a < end]
                stop = min([pos + size, end, *ahead])
            out.append((pos, stop))
            pos = stop
        return out

    def load(self, parcel: Parcel) -> MetricBatch | None:
        """As :meth:`RangeStore.load`; a range whose records cannot be read is remembered
        (:meth:`lost` says why).

        Raises:
            SpoolError: the dictionary lacks entries the records need.
        """
        try:
            return super().load(parcel)
        except SpoolError:
            self._failed_loads.add(parcel.seq)
            raise

    def lost(self, parcel: Parcel) -> tuple[int, DropReason | None]:
        """Records of the range deleted by the size bound, or not readable."""
        if parcel.seq in self._failed_loads:
            return parcel.count, DropReason.SPOOL_FAILED
        return super().lost(parcel)

    def settle(self, parcel: Parcel) -> None:
        """As :meth:`RangeStore.settle`, telling ``on_settle`` before and after."""
        super().settle(parcel)
        if self._on_settle is not None and parcel.place is not None:
            self._on_settle(None)

    def _settling(self, first: int, end: int) -> None:
        if self._on_settle is not None:
            self._on_settle((first, end))
