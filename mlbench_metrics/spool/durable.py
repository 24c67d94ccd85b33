"""The durable log: every record in a memory-mapped file before ``log()`` returns.

In a writer directory (see ``files.py``)::

    seg-<first seq>.bin   fixed 48-byte record slots, memory-mapped, space reserved
    dict.log              framed entries: names, contexts and string values, by id
    state.bin             the delivered watermark and the highest record batched

A slot: value (f64, or i64 for integers and string ids) @0, time_ns @8, step @16, name
id @24, context id @28, kind @32, flags @33, the control byte the dispatcher owns @36,
and the commit word (sequence number + 1) @40. The 8-byte fields sit at multiples of 8
so each column reads with one strided memoryview. A slot is packed in one call, commit
word last (struct packs in order), so a process killed before the commit leaves an
uncommitted slot: a ``log()`` that had not returned. Control bits: a batch's first and
last slot (marked before it is sent), delivered (on its first slot), and done (a slot
stored or refused on its own, after a partial answer: never sent again).

Segments are reserved with ``posix_fallocate`` before they are mapped: a full disk is an
error here, never a SIGBUS in the training thread. Size bound: at most ``max(2,
max_bytes // 16 MiB)`` segments are kept; mapping one more deletes the oldest (its
undelivered records are counted as ``"spool_full"``).

This module is the only writer and reader of these files: :class:`DurableLog` (the
live process) and :func:`read_durable` / :class:`DurableMarks` (``sync``). No threads.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..errors import SpoolError
from ..records import Context
from ..records.checks import Value
from .files import SpoolDir, frame, read_frames

__all__ = [
    "CTL_DELIVERED",
    "CTL_DONE",
    "CTL_END",
    "CTL_START",
    "DurableLog",
    "DurableMarks",
    "DurableRecord",
    "DurableReport",
    "durable_metadata",
    "read_durable",
    "replay_batches",
]

_log = logging.getLogger("mlbench_metrics")

SLOT: Final = 48
SLOT_F: Final = struct.Struct("<dqqIIBBxxxxxxQ")
SLOT_I: Final = struct.Struct("<qqqIIBBxxxxxxQ")
_COMMIT: Final = struct.Struct("<Q")
_KIND_AT: Final = 32
_FLAGS_AT: Final = 33
_CONTROL_AT: Final = 36
_COMMIT_AT: Final = 40
SEGMENT_SLOTS: Final = 349_525  # 16 MiB
KIND_FLOAT, KIND_INT, KIND_STR = 0, 1, 2
FLAG_CUMULATIVE, FLAG_STEP = 1, 2
NO_STEP: Final = -(2**63)
CTL_START, CTL_END, CTL_DELIVERED, CTL_DONE = 1, 2, 4, 8
_STEP_BIT: Final = bytes(b & FLAG_STEP for b in range(256))  # flags byte -> its step bit
_DONE_BIT: Final = bytes(b & CTL_DONE for b in range(256))
_GAP_WINDOW: Final = 4096  # uncommitted slots read past: threads caught between taking and filling one
_STATE_MAGIC: Final = b"MLBMDUR2"
_STATE: Final = struct.Struct("<8sQQ")  # magic, watermark, highest seq batched + 1


def _segment_name(first: int) -> str:
    return f"seg-{first:012d}.bin"


@dataclass
class _Segment:
    first: int
    path: Path
    mm: mmap.mmap
    fd: int

    @property
    def end(self) -> int:
        return self.first + SEGMENT_SLOTS


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
        self._keep = max(2, max_bytes // (SEGMENT_SLOTS * SLOT))
        self._segments: list[_Segment] = []
        self._lock = threading.Lock()  # the dictionary and the segment list
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
            _STATE.pack_into(self._state, 0, _STATE_MAGIC, 0, 0)
            self._map(0)
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
        with self._lock:
            while self._segments[-1].end <= seq:
                self._map(self._segments[-1].end)
            for segment in reversed(self._segments):
                if segment.first <= seq < segment.end:
                    return segment.mm, segment.first, segment.end
        return bytearray(SLOT), seq, seq + 1

    def prepare(self, seq: int) -> None:
        """Reserve the segment after the newest when ``seq`` is past half of it, so the
        training thread seldom waits for a reservation. Failing here is not an error: the
        writer will meet it itself."""
        with self._lock:
            newest = self._segments[-1] if self._segments else None
            if newest is None or self.closed or seq < newest.first + SEGMENT_SLOTS // 2:
                return
            with contextlib.suppress(SpoolError, OSError):
                self._map(newest.end)

    def _map(self, first: int) -> None:
        """Reserve and map the segment starting at ``first`` (under the lock); past the
        size bound, delete the oldest."""
        path = self.path / _segment_name(first)
        size = SEGMENT_SLOTS * SLOT
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)  # the disk is claimed now, not at the first write
            mm = mmap.mmap(fd, size)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise SpoolError(f"cannot reserve {size >> 20} MiB for {path}: {exc}") from exc
        self._segments.append(_Segment(first, path, mm, fd))
        if len(self._segments) > self._keep:
            oldest = self._segments.pop(0)
            _log.warning("mlbench-metrics: the durable log passed its size bound; deleted %s", oldest.path.name)
            self._unmap(oldest, delete=True)

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
                        at = (seq - segment.first) * SLOT + _CONTROL_AT
                        segment.mm[at] |= bits
                        break

    def mark_batch(self, first: int, end: int) -> None:
        """Record that records ``first..end-1`` travel as one batch (before it is sent)."""
        self._control([end - 1], CTL_END)
        self._control([first], CTL_START)
        if end > _STATE.unpack_from(self._state, 0)[2]:
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

    def read(self, first: int, end: int) -> tuple[list[Any], ...]:
        """Records ``first..end-1`` not marked done, as columns: (names, values,
        times_ns, steps, contexts, seqs).

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
        if not columns[0]:
            return columns
        names = _pick(self._names_by_id, columns[0])
        contexts = _pick(self._context_refs, columns[4])
        return names, columns[1], columns[2], columns[3], contexts, columns[5]

    def _unpack(self, lo: int, data: bytes, out: tuple[list[Any], ...]) -> None:
        words = memoryview(data).cast("q")  # six per slot
        halves = words.cast("B").cast("I")  # twelve per slot
        n = len(words) // 6
        kinds = data[_KIND_AT::SLOT]
        values: list[Any] = words.cast("B").cast("d")[0::6].tolist()
        if kinds.count(KIND_FLOAT) != n:
            integers = words[0::6].tolist()
            for i, kind in enumerate(kinds):
                if kind == KIND_INT:
                    values[i] = integers[i]
                elif kind == KIND_STR:
                    values[i] = self._strings.get(integers[i], "")
        stepped = data[_FLAGS_AT::SLOT].translate(_STEP_BIT)
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
        done = data[_CONTROL_AT::SLOT].translate(_DONE_BIT)
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


# -- what sync reads and marks --------------------------------------------------------------


@dataclass
class DurableRecord:
    """One record read back from a durable log."""

    seq: int
    name: str
    value: Value
    time_ns: int
    step: int | None
    context: dict[str, Any]
    control: int


@dataclass
class DurableReport:
    """What a dead writer's durable log holds, and what of it cannot be read.

    Attributes:
        records: every readable committed record after the watermark, not done.
        watermark: everything before it was delivered.
        torn: uncommitted slots with data: ``log()`` calls killed halfway (never returned,
            so nothing was promised for them).
        unreadable: records known to exist that cannot be delivered.
        problems: one line per damage found: what, which file, how many records.
    """

    records: list[DurableRecord] = field(default_factory=list)
    watermark: int = 0
    torn: int = 0
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)


def _read_dictionary(path: Path, report: DurableReport) -> tuple[dict[int, str], dict[int, Any], dict[int, str]]:
    names: dict[int, str] = {}
    contexts: dict[int, Any] = {}
    strings: dict[int, str] = {}
    damaged = 0
    dict_path = path / "dict.log"
    data = dict_path.read_bytes() if dict_path.exists() else b""
    for item in read_frames(data):
        if item.payload is None:
            damaged += item.problem == "damaged"
            continue
        try:
            entry = json.loads(item.payload)
            if "n" in entry:
                names[int(entry["n"])] = str(entry["v"])
            elif "c" in entry:
                contexts[int(entry["c"])] = entry
            elif "s" in entry:
                strings[int(entry["s"])] = str(entry["v"])
        except (ValueError, KeyError, TypeError):
            damaged += 1
    if damaged:
        report.problems.append(f"dict.log: {damaged} damaged entr{'y' if damaged == 1 else 'ies'}")
    return names, contexts, strings


def read_durable(path: Path) -> DurableReport:
    """Every record a dead writer's log holds after its watermark, and what is damaged."""
    report = DurableReport()
    names, contexts, strings = _read_dictionary(path, report)
    batched = 0
    state = path / "state.bin"
    if state.exists():
        raw = state.read_bytes()
        if len(raw) >= _STATE.size and raw[:8] == _STATE_MAGIC:
            _, report.watermark, batched = _STATE.unpack_from(raw, 0)
    segments = sorted(path.glob("seg-*.bin"))
    firsts = [int(p.name[4:-4]) for p in segments]
    missing_refs = 0
    for number, seg_path in enumerate(segments):
        first = firsts[number]
        data = seg_path.read_bytes()
        slots = len(data) // SLOT
        if slots < SEGMENT_SLOTS:
            known_end = firsts[number + 1] if number + 1 < len(firsts) else batched
            lost = max(0, known_end - max(first + slots, report.watermark))
            report.unreadable += lost
            report.problems.append(
                f"{seg_path.name}: truncated to {len(data)} of {SEGMENT_SLOTS * SLOT} bytes; "
                f"{lost} records past slot {slots} cannot be read"
            )
        i = 0
        while i < slots:
            seq, offset = first + i, i * SLOT
            (commit,) = _COMMIT.unpack_from(data, offset + _COMMIT_AT)
            if commit != seq + 1:
                # Not committed: a log() call that never returned (torn when half written).
                # Threads take slots before they fill them, so a later slot may be
                # committed; past a window with none, this is the end of the data.
                report.torn += any(data[offset : offset + SLOT])
                i = _next_commit(data, first, i + 1, min(slots, i + 1 + _GAP_WINDOW))
                continue
            i += 1
            control = data[offset + _CONTROL_AT]
            if seq < report.watermark or control & CTL_DONE:
                continue
            kind = data[offset + _KIND_AT]
            value, time_ns, step, name_id, ctx_id, _, flags, _ = (SLOT_F if kind == KIND_FLOAT else SLOT_I).unpack_from(
                data, offset
            )
            name = names.get(name_id)
            context = contexts.get(ctx_id)
            text = strings.get(value) if kind == KIND_STR else None
            if name is None or context is None or (kind == KIND_STR and text is None):
                missing_refs += 1
                continue
            step_or_none = step if flags & FLAG_STEP else None
            report.records.append(
                DurableRecord(seq, name, text if text is not None else value, time_ns, step_or_none, context, control)
            )
    if missing_refs:
        report.unreadable += missing_refs
        report.problems.append(f"dict.log: {missing_refs} records refer to names or values it does not hold")
    return report


def _next_commit(data: bytes, first: int, start: int, stop: int) -> int:
    """The index of the first committed slot in ``start..stop-1``, else ``len(data)``."""
    for i in range(start, stop):
        (commit,) = _COMMIT.unpack_from(data, i * SLOT + _COMMIT_AT)
        if commit == first + i + 1:
            return i
    return len(data)


def replay_batches(records: list[DurableRecord], batch_size: int) -> list[list[DurableRecord]]:
    """The batches a replay sends: each range the dispatcher marked (it may have sent it
    under the range's id), then the records it never batched, in new ranges."""
    out = []
    i, n = 0, len(records)
    while i < n:
        if records[i].control & CTL_START:
            j = i
            while j < n and not records[j].control & CTL_END and (j == i or not records[j].control & CTL_START):
                j += 1
            contiguous = j < n and records[j].seq - records[i].seq == j - i
            if contiguous and records[j].control & CTL_END and (j == i or not records[j].control & CTL_START):
                out.append(records[i : j + 1])
                i = j + 1
                continue
        j = i + 1
        while (
            j < n
            and not records[j].control & CTL_START
            and j - i < batch_size
            and records[j].seq == records[j - 1].seq + 1
        ):
            j += 1
        out.append(records[i:j])
        i = j
    return out


def durable_metadata(context: dict[str, Any], step: int | None) -> str:
    """The metadata text of a durable record, as the live logger would have sent it."""
    rank, epoch, extra = context.get("rank"), int(context.get("epoch", 0)), context.get("extra", "")
    ctx = Context(rank, epoch, context.get("step"), False, extra)
    return ctx.metadata(step)


class DurableMarks:
    """Marks deliveries in a dead writer's log, as the live dispatcher would (for sync).

    Args:
        path: the writer directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state = os.open(path / "state.bin", os.O_RDWR)

    def delivered(self, first: int, control: int) -> None:
        """Mark the batch starting at ``first`` (whose control byte is ``control``) delivered."""
        for seg_path in self.path.glob("seg-*.bin"):
            seg_first = int(seg_path.name[4:-4])
            if seg_first <= first < seg_first + SEGMENT_SLOTS:
                with open(seg_path, "r+b") as seg:
                    seg.seek((first - seg_first) * SLOT + _CONTROL_AT)
                    seg.write(bytes([control | CTL_DELIVERED]))
                return

    def watermark(self, seq: int) -> None:
        """Everything before ``seq`` is delivered."""
        os.pwrite(self._state, struct.pack("<Q", seq), 8)

    def close(self) -> None:
        """Release the state file."""
        os.close(self._state)
