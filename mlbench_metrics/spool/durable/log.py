"""The live durable log, as its writer keeps it: segments reserved and mapped, the dictionary.

The training threads write slots (through ``range_store.py``'s writer) and the dictionary's
entries; whoever delivers (the dispatcher thread, or an agent process through its own
:class:`~.tail.TailLog`) marks batches and deliveries and moves the watermark, with
the code both share (``mapped.py``). Segments are reserved with ``posix_fallocate``
before they are mapped: a full disk is an error here, never a SIGBUS in the training
thread. No threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import threading
from typing import Any

from ...errors import SpoolError
from ...records import Context
from ..files import SpoolDir, frame
from . import layout
from .layout import SLOT, STATE, STATE_MAGIC, segment_name
from .mapped import Columns, Segment, SharedLog

__all__ = ["Columns", "DurableLog"]

_log = logging.getLogger("mlbench_metrics")


class DurableLog(SharedLog):
    """Records written straight into memory-mapped files, so a killed process keeps them.

    Writers (``DurableStore``'s, on the training threads) fill one slot per record; the
    page cache keeps it when the process dies. Names, contexts and string values go to
    ``dict.log`` once. The dispatcher (or an agent process) marks batches and
    deliveries in the slots' control bytes and moves the delivered watermark.

    Args:
        directory: the writer's directory (created now).
        max_bytes: the size bound (see the package docstring).

    Raises:
        SpoolError: the directory or the first segment cannot be created.
    """

    def __init__(self, directory: SpoolDir, max_bytes: int = 1 << 30) -> None:
        super().__init__(directory.ensure(), directory.writer)
        self.dir = directory
        self._keep = max(2, max_bytes // (layout.SEGMENT_SLOTS * SLOT))
        self._growing = threading.Lock()  # one segment reserved at a time, outside _lock
        self._bound_said = False  # the size bound is said once: a long burst meets it per segment
        self._names: dict[str, int] = {}
        self._contexts: dict[int, int] = {}
        self._dict_fd = -1
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
            self._forget_delivered()
            with self._lock:
                self._segments.append(segment)
                oldest = self._segments.pop(0) if len(self._segments) > self._keep else None
            if oldest is not None:
                self.deletions += 1
                if not self._bound_said:
                    self._bound_said = True
                    _log.warning(
                        "mlbench-metrics: the durable log passed its size bound; deleted %s "
                        "(older undelivered records are deleted from now on; see stats.dropped)",
                        oldest.path.name,
                    )
                with self._lock:
                    oldest.unmap(delete=True)

    def _forget_delivered(self) -> None:
        """Unmap the segments an agent process delivered (it moved the shared watermark
        past them, and deletes their files); in this process the dispatcher did that."""
        mark = self.shared_watermark()
        if mark <= self.watermark:
            return
        self.watermark = mark
        with self._lock:
            spent = [s for s in self._segments if s.end <= mark]
            self._segments = [s for s in self._segments if s not in spent]
            for segment in spent:
                segment.unmap(delete=True)

    def _reserve(self, first: int) -> Segment:
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
        return Segment(first, path, mm, fd)

    def _close_files(self) -> None:
        if self._dict_fd >= 0:
            os.close(self._dict_fd)
