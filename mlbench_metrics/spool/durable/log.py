"""The live durable log: segments reserved and mapped, the dictionary, the marks.

The training threads write slots (through ``store.py``'s writer) and the dictionary's
entries; the dispatcher thread marks batches and deliveries and moves the watermark.
Segments are reserved with ``posix_fallocate`` before they are mapped: a full disk is
an error here, never a SIGBUS in the training thread. No threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import operator
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from ...errors import SpoolError
from ...records import Context
from ...records.checks import Value
from ..files import SpoolDir, frame
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
    STATE_MAGIC,
    STEP_BIT,
    segment_name,
)

__all__ = ["Columns", "DurableLog"]

_log = logging.getLogger("mlbench_metrics")


class Columns(NamedTuple):
    """Records read back from the log, as columns (what ``records.encode_columns`` takes)."""

    names: list[str]
    values: list[Value]
    times_ns: list[int]
    steps: list[int | None]
    contexts: list[Context]
    seqs: list[int]


@dataclass
class _Segment:
    first: int
    path: Path
    mm: mmap.mmap
    fd: int

    @property
    def end(self) -> int:
        return self.first + layout.SEGMENT_SLOTS


class DurableLog:
    """Records written straight into memory-mapped files, so a killed process keeps them.

    Writers (``DurableStore``'s, on the training threads) fill one slot per record; the
    page cache keeps it when the process dies. Names, contexts and string values go to
    ``dict.log`` once. The dispatcher marks batches and deliveries in the slots' control
    bytes and moves the delivered watermark.

    Args:
        directory: the writer's directory (created now).
        max_bytes: the size bound (see the module docstring).

    Raises:
        SpoolError: the directory or the first segment cannot be created.
    """

    def __init__(self, directory: SpoolDir, max_bytes: int = 1 << 30) -> None:
        self.dir = directory
        self.path = directory.ensure()
        self._keep = max(2, max_bytes // (layout.SEGMENT_SLOTS * SLOT))
        self._segments: list[_Segment] = []
        self._lock = threading.Lock()  # the dictionary and the segment list
        self._growing = threading.Lock()  # one segment reserved at a time, outside _lock
        self._names: dict[str, int] = {}
        self._names_by_id: list[str] = []
        self._contexts: dict[int, int] = {}
        self._context_refs: list[Context] = []  # keeps contexts alive, so their ids stay unique
        self._strings: dict[int, str] = {}
        self.watermark = 0
        self.closed = False
        try:
            self._dict_fd = os.open(self.path / "dict.log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
            self._state_fd = os.open(self.path / "state.bin", os.O_CREAT | os.O_RDWR, 0o644)
            os.posix_fallocate(self._state_fd, 0, mmap.PAGESIZE)
            self._state = mmap.mmap(self._state_fd, mmap.PAGESIZE)
            STATE.pack_into(self._state, 0, STATE_MAGIC, 0, 0)
            self._segments.append(self._reserve(0))
        except OSError as exc:
            raise SpoolError(f"cannot create the durable log in {self.path}: {exc}") from exc

    # -- for writers (slow paths: each name, context, string and segment once) ----------

    def _entry(self, entry: dict[str, Any]) -> None:
        try:
            os.write(self._dict_fd, frame(json.dumps(entry).encode()))
        except OSError as exc:
            raise SpoolError(f"cannot write {self.path / 'dict.log'}: {exc}") from exc

    def name_id(self, name: str) -> int:
        """The id of ``name``, written to the dictionary the first time.

        Raises:
            SpoolError: the dictionary cannot be written.
        """
        with self._lock:
            known = self._names.get(name)
            if known is None:
                known = len(self._names_by_id)
                self._entry({"n": known, "v": name})
                self._names[name] = known
                self._names_by_id.append(name)
            return known

    def context_id(self, ctx: Context) -> int:
        """The id of a logger context (rank, epoch, step, extra metadata, cumulative).

        Raises:
            SpoolError: the dictionary cannot be written.
        """
        with self._lock:
            known = self._contexts.get(id(ctx))
            if known is None:
                known = len(self._context_refs)
                entry = {"c": known, "rank": ctx.rank, "epoch": ctx.epoch, "step": ctx.step}
                self._entry({**entry, "cum": ctx.cumulative, "extra": ctx.extra})
                self._contexts[id(ctx)] = known
                self._context_refs.append(ctx)
            return known

    def string_id(self, text: str) -> int:
        """Store a string value in the dictionary; returns its id.

        Raises:
            SpoolError: the dictionary cannot be written.
        """
        with self._lock:
            number = len(self._strings) + 1
            self._entry({"s": number, "v": text})
            self._strings[number] = text
            return number

    def segment_for(self, seq: int) -> tuple[mmap.mmap | bytearray, int, int]:
        """Where slot ``seq`` is written (mapping segments as needed): (buffer, first, end).

        A slot whose segment the size bound deleted already (its thread was stalled for
        two segments' worth of records) goes to a scratch buffer: the dispatcher finds
        it missing and counts it under ``"spool_full"``.

        Raises:
            SpoolError: a segment cannot be reserved (the disk is full).
        """
        while True:
            with self._lock:
                for segment in reversed(self._segments):
                    if segment.first <= seq < segment.end:
                        return segment.mm, segment.first, segment.end
                newest_end = self._segments[-1].end if self._segments else seq + 1
            if newest_end > seq:
                return bytearray(SLOT), seq, seq + 1
            self._grow(newest_end)

    def prepare(self, seq: int) -> None:
        """Reserve the segment after the newest when ``seq`` is past half of it, so the
        training thread seldom waits for a reservation. Failing here is not an error: the
        writer will meet it itself."""
        with self._lock:
            newest = self._segments[-1] if self._segments else None
            if newest is None or self.closed or seq < newest.first + layout.SEGMENT_SLOTS // 2:
                return
        with contextlib.suppress(SpoolError):
            self._grow(newest.end)

    def _grow(self, first: int) -> None:
        """Add the segment starting at ``first`` unless another thread did; past the size
        bound, delete the oldest. The reservation (which may take a while) holds only
        ``_growing``, so writers of names and strings are not kept waiting.

        Raises:
            SpoolError: it cannot be reserved.
        """
        with self._growing:
            with self._lock:
                if self.closed or (self._segments and self._segments[-1].end > first):
                    return
            segment = self._reserve(first)
            with self._lock:
                self._segments.append(segment)
                oldest = self._segments.pop(0) if len(self._segments) > self._keep else None
            if oldest is not None:
                _log.warning("mlbench-metrics: the durable log passed its size bound; deleted %s", oldest.path.name)
                with self._lock:
                    self._unmap(oldest, delete=True)

    def _reserve(self, first: int) -> _Segment:
        """Reserve the disk for the segment starting at ``first``, and map it."""
        path = self.path / segment_name(first)
        size = layout.SEGMENT_SLOTS * SLOT
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)  # the disk is claimed now, not at the first write
            mm = mmap.mmap(fd, size)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise SpoolError(f"cannot reserve {size >> 20} MiB for {path}: {exc}") from exc
        return _Segment(first, path, mm, fd)

    @staticmethod
    def _unmap(segment: _Segment, delete: bool) -> None:
        segment.mm.close()
        os.close(segment.fd)
        if delete:
            with contextlib.suppress(OSError):
                segment.path.unlink()

    # -- the dispatcher -----------------------------------------------------------------

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
        self._control([end - 1], CTL_END)
        self._control([first], CTL_START)
        if end > STATE.unpack_from(self._state, 0)[2]:
            struct.pack_into("<Q", self._state, 16, end)

    def mark_delivered(self, first: int) -> None:
        """Record that the batch starting at ``first`` is stored."""
        self._control([first], CTL_DELIVERED)

    def mark_done(self, seqs: list[int]) -> None:
        """Record that these records are stored or refused, each on its own."""
        self._control(seqs, CTL_DONE)

    def set_watermark(self, seq: int) -> None:
        """Everything before ``seq`` is delivered: persist that, delete spent segments."""
        if seq <= self.watermark:
            return
        self.watermark = seq
        struct.pack_into("<Q", self._state, 8, seq)
        with self._lock:
            spent = [s for s in self._segments[:-1] if s.end <= seq]
            self._segments = [s for s in self._segments if s not in spent]
            for segment in spent:
                self._unmap(segment, delete=True)

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
        return f"{self.dir.writer}:{first}-{end}"

    def close(self) -> None:
        """Unmap everything (the files stay for ``sync`` unless the directory is removed)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            segments, self._segments = self._segments, []
            for segment in segments:
                segment.mm.flush()
                self._unmap(segment, delete=False)
            self._state.close()
            os.close(self._state_fd)
            os.close(self._dict_fd)


def _pick(table: list[Any], ids: list[int]) -> list[Any]:
    """``[table[i] for i in ids]`` at C speed."""
    return [table[ids[0]]] if len(ids) == 1 else list(operator.itemgetter(*ids)(table))
