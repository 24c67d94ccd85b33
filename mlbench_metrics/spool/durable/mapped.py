"""A durable log as its processes see it: the segments mapped, the marks, reading back.

The writer's :class:`~.log.DurableLog` and the agent's :class:`~.tail.TailLog` map the
same files; both mark batches and deliveries in the slots' control bytes and read
records back as columns, with the code here. A slot's control byte is written by
whoever delivers it, only after the writer committed the slot (the writer never
writes a slot twice), so the two processes never write the same byte. No threads.
"""

from __future__ import annotations

import mmap
import operator
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ...records import Context
from ...records.checks import Value
from . import layout
from .layout import (
    CONTROL_AT,
    CTL_DELIVERED,
    CTL_DONE,
    CTL_END,
    CTL_START,
    DONE_BIT,
    FLAGS_AT,
    KIND_AT,
    KIND_FLOAT,
    KIND_INT,
    KIND_STR,
    SLOT,
    STATE,
    STEP_BIT,
)

__all__ = ["Columns", "Segment", "SharedLog"]


class Columns(NamedTuple):
    """Records read back from the log, as columns (what ``records.encode_columns`` takes)."""

    names: list[str]
    values: list[Value]
    times_ns: list[int]
    steps: list[int | None]
    contexts: list[Context]
    seqs: list[int]


@dataclass
class Segment:
    """One mapped segment file: slots ``first..end-1``."""

    first: int
    path: Path
    mm: mmap.mmap
    fd: int

    @property
    def end(self) -> int:
        """The slot after its last."""
        return self.first + layout.SEGMENT_SLOTS

    def unmap(self, delete: bool) -> None:
        """Unmap it and close its file; with ``delete``, remove the file too."""
        self.mm.close()
        os.close(self.fd)
        if delete:
            try:
                self.path.unlink()
            except OSError:
                pass


class SharedLog:
    """The part of a durable log its writer and its deliverer share.

    Subclasses map the segments (``_segments``, oldest first), open ``state.bin`` as
    ``_state`` and fill the dictionary tables; this class marks and reads.

    Args:
        path: the writer directory.
        writer: its name, the batch ids' prefix (the same in every replay).
    """

    def __init__(self, path: Path, writer: str) -> None:
        self.path = path
        self.writer = writer
        self._segments: list[Segment] = []
        self._lock = threading.Lock()  # the dictionary and the segment list
        self._names_by_id: list[str] = []
        self._context_refs: list[Context] = []  # keeps contexts alive, so their ids stay unique
        self._strings: dict[int, str] = {}
        self._state: mmap.mmap | None = None
        self._state_fd = -1
        self.watermark = 0
        self.closed = False
        self.deletions = 0  # segments the size bound deleted (the writer's; 0 elsewhere)

    def prepare(self, seq: int) -> None:
        """Get ready for slot ``seq`` (the writer reserves segments ahead; others do nothing)."""

    def _control(self, seqs: list[int], bits: int) -> None:
        with self._lock:
            for seq in seqs:
                for segment in self._segments:
                    if segment.first <= seq < segment.end:
                        at = (seq - segment.first) * SLOT + CONTROL_AT
                        segment.mm[at] |= bits
                        break

    def mark_batch(self, first: int, end: int) -> None:
        """Record that records ``first..end-1`` travel as one batch (before it is sent)."""
        if self.closed:
            return
        self._control([end - 1], CTL_END)
        self._control([first], CTL_START)  # second: a start always has its end
        if self._state is not None and end > STATE.unpack_from(self._state, 0)[2]:
            struct.pack_into("<Q", self._state, 16, end)

    def mark_delivered(self, first: int) -> None:
        """Record that the batch starting at ``first`` is stored."""
        self._control([first], CTL_DELIVERED)

    def mark_done(self, seqs: list[int]) -> None:
        """Record that these records are stored or refused, each on its own."""
        self._control(seqs, CTL_DONE)

    def set_watermark(self, seq: int) -> None:
        """Everything before ``seq`` is delivered: persist that, delete spent segments."""
        if seq <= self.watermark or self.closed:
            return
        self.watermark = seq
        if self._state is not None:
            struct.pack_into("<Q", self._state, 8, seq)
        with self._lock:
            spent = [s for s in self._segments[:-1] if s.end <= seq]
            self._segments = [s for s in self._segments if s not in spent]
            for segment in spent:
                segment.unmap(delete=True)

    def shared_watermark(self) -> int:
        """The delivered watermark as ``state.bin`` holds it (another process may move it)."""
        if self._state is None or self.closed:
            return self.watermark
        return int(STATE.unpack_from(self._state, 0)[1])

    def missing(self, first: int, end: int) -> int:
        """How many of the slots ``first..end-1`` no segment holds any more."""
        with self._lock:
            held = sum(max(0, min(end, s.end) - max(first, s.first)) for s in self._segments)
        return end - first - held

    def read(self, first: int, end: int) -> Columns:
        """Records ``first..end-1`` not marked done, as columns.

        Slots whose segment the size bound deleted are missing from the answer. The
        slots are copied under the lock and unpacked at C speed; only non-float values
        (rare in training metrics) are unpacked again one by one.
        """
        with self._lock:
            pieces = [
                (lo, s.mm[(lo - s.first) * SLOT : (hi - s.first) * SLOT])
                for s in self._segments
                for lo, hi in [(max(first, s.first), min(end, s.end))]
                if lo < hi
            ]
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
        for lo, data in pieces:
            self._unpack(lo, data, columns)
        name_ids, values, times, steps, context_ids, seqs = columns
        if not name_ids:
            return Columns([], [], [], [], [], [])
        names = _pick(self._names_by_id, name_ids)
        return Columns(names, values, times, steps, _pick(self._context_refs, context_ids), seqs)

    def _unpack(self, lo: int, data: bytes, out: tuple[list[Any], ...]) -> None:
        words = memoryview(data).cast("q")  # six per slot
        halves = words.cast("B").cast("I")  # twelve per slot
        n = len(words) // 6
        kinds = data[KIND_AT::SLOT]
        values: list[Any] = words.cast("B").cast("d")[0::6].tolist()
        if kinds.count(KIND_FLOAT) != n:
            integers = words[0::6].tolist()
            for i, kind in enumerate(kinds):
                if kind == KIND_INT:
                    values[i] = integers[i]
                elif kind == KIND_STR:
                    values[i] = self._strings.get(integers[i], "")
        stepped = data[FLAGS_AT::SLOT].translate(STEP_BIT)
        unstepped = stepped.count(0)
        steps: list[Any]
        if unstepped == n:
            steps = [None] * n
        elif unstepped == 0:
            steps = words[2::6].tolist()
        else:
            steps = [s if bit else None for s, bit in zip(words[2::6].tolist(), stepped)]
        columns = [halves[6::12].tolist(), values, words[1::6].tolist(), steps, halves[7::12].tolist()]
        seqs = list(range(lo, lo + n))
        done = data[CONTROL_AT::SLOT].translate(DONE_BIT)
        if done.count(0) != n:  # some were stored on their own after a partial answer
            keep = [i for i, bit in enumerate(done) if not bit]
            columns = [[c[i] for i in keep] for c in columns]
            seqs = [seqs[i] for i in keep]
        for target, column in zip(out, [*columns, seqs]):
            target += column

    def batch_id(self, first: int, end: int) -> str:
        """The id a durable batch is sent under: the same in every replay."""
        return f"{self.writer}:{first}-{end}"

    def close(self) -> None:
        """Unmap everything (the files stay for ``sync`` unless the directory is removed)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            segments, self._segments = self._segments, []
            for segment in segments:
                segment.mm.flush()
                segment.unmap(delete=False)
            if self._state is not None:
                self._state.close()
                os.close(self._state_fd)
            self._close_files()

    def _close_files(self) -> None:
        """Close what a subclass opened besides the segments and the state (under the lock)."""


def _pick(table: list[Any], ids: list[int]) -> list[Any]:
    """``[table[i] for i in ids]`` at C speed."""
    return [table[ids[0]]] if len(ids) == 1 else list(operator.itemgetter(*ids)(table))
