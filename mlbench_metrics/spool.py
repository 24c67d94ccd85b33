"""The on-disk spool: batches that could not be delivered, and durable mode's record log.

Layout, one directory per run and one per writing process::

    <root>/run-<run_id>/<host>-<pid>-<id>/
        owner.lock          flock'd while the writing process lives (sync skips it)
        meta.json           run id, endpoint, batch-id prefix, durable or not
        spool-000001.log    failed or overflowing batches, appended, fsync'd per batch
        spool-000001.acks   ids of the batches from that file since delivered
        dict.log            durable mode: names, contexts and string values
        seg-000001.bin      durable mode: fixed 48-byte record slots, memory-mapped
        state.bin           durable mode: the delivered watermark

Every appended record (``*.log``) is framed ``[length u32][crc32 u32][payload]``: a
record torn by a crash fails its length or checksum and is reported and skipped, and
the records before it are read as usual. A durable slot is committed by writing its
sequence number last, after the payload: a slot without its number is a ``log()`` call
that had not returned (a torn record when half written), and past a window of those,
the end of the data.

Exactly once on the embedded server: every batch carries an id, and durable batches'
ids name their record range (``<writer>:<first>-<end>``); the dispatcher marks a range
in the slots' control bytes *before* sending it, so a replay after a crash sends the
same ranges under the same ids and the server drops the ones it has. Against the
dashboard (no ids), delivery is at least once.

Size bound: when a writer's files pass ``max_bytes``, its oldest spool file is deleted;
a durable log keeps at most ``max(2, max_bytes // 16 MiB)`` segments and deletes the
oldest when it maps a new one. Undelivered records deleted so are counted as dropped
(``"spool_full"``): the newest records, the ones people need most after a crash, are
kept. No threads are started here; the dispatcher thread does the spool's I/O, and the
training thread only writes durable slots (and, once per 350k records, maps a segment).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import json
import logging
import mmap
import operator
import os
import socket
import struct
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Iterator

from .config import ENV_SPOOL_DIR, env_str
from .errors import SpoolError
from .records import MetricBatch

__all__ = [
    "BatchSpool",
    "DurableBuffer",
    "DurableLog",
    "DurableStore",
    "SpoolDir",
    "SpoolStore",
    "default_spool_root",
    "read_frames",
    "writer_dirs",
]

_log = logging.getLogger("mlbench_metrics")

_FRAME: Final = struct.Struct("<II")
_SPOOL_FILE_BYTES: Final = 8 * 1024 * 1024

# A durable slot, 48 bytes: value (f64, or i64 for integers and string ids) @0, time_ns
# @8, step @16, name id @24, context id @28, kind @32, flags @33, the control byte the
# dispatcher owns @36, the commit word (the sequence number + 1) @40. The 8-byte fields
# sit at multiples of 8 so the dispatcher reads each column with one strided memoryview.
# The whole slot is packed in one call, commit word last: struct packs fields in order,
# so the commit is the last store, and a process killed before it leaves an uncommitted
# slot. (The pad bytes include the control byte: zero until the dispatcher marks it.)
_SLOT: Final = 48
_SLOT_F: Final = struct.Struct("<dqqIIBBxxxxxxQ")
_SLOT_I: Final = struct.Struct("<qqqIIBBxxxxxxQ")
_COMMIT: Final = struct.Struct("<Q")
_KIND_AT: Final = 32
_FLAGS_AT: Final = 33
_CONTROL_AT: Final = 36
_COMMIT_AT: Final = 40
_SEGMENT_SLOTS: Final = 349_525  # 16 MiB
_KIND_FLOAT, _KIND_INT, _KIND_STR = 0, 1, 2
_FLAG_CUMULATIVE, _FLAG_STEP = 1, 2
_STEP_BIT: Final = bytes(b & _FLAG_STEP for b in range(256))  # flags byte -> its step bit
_CTL_START, _CTL_END, _CTL_DELIVERED = 1, 2, 4
_NO_STEP: Final = -(2**63)
_GAP_WINDOW: Final = 4096  # uncommitted slots read past: threads caught between taking and filling one
_STATE_MAGIC: Final = b"MLBMDUR1"


def default_spool_root() -> Path:
    """``MLBENCH_METRICS_SPOOL_DIR``, else ``$XDG_CACHE_HOME/mlbench-metrics/spool``."""
    explicit = env_str(ENV_SPOOL_DIR)
    if explicit:
        return Path(explicit).expanduser()
    cache = env_str("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mlbench-metrics" / "spool"


def frame(payload: bytes) -> bytes:
    """``payload`` with its length and checksum in front."""
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """``(offset, payload)`` for each framed record; ``payload`` is None for a torn one.

    A record whose length runs past the end is torn (the last one, cut by a crash); one
    whose checksum fails is damaged and skipped, and reading goes on after it.
    """
    offset = 0
    end = len(data)
    while offset + _FRAME.size <= end:
        length, crc = _FRAME.unpack_from(data, offset)
        start = offset + _FRAME.size
        if length == 0 and crc == 0:
            return  # preallocated, never written
        if start + length > end:
            yield offset, None
            return
        payload = data[start : start + length]
        yield offset, (payload if zlib.crc32(payload) == crc else None)
        offset = start + length
    if offset < end and any(data[offset:end]):
        yield offset, None  # a few bytes of a frame header: torn


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolDir:
    """One writing process's spool directory; created on first use, locked while alive.

    Args:
        root: the spool root (``default_spool_root()`` when None).
        run_id: the run the records belong to.
        meta: facts written to ``meta.json`` (endpoint, batch-id prefix, ...).
    """

    def __init__(self, root: str | os.PathLike[str] | None, run_id: int, meta: dict[str, Any]) -> None:
        self.root = Path(root) if root is not None else default_spool_root()
        self.run_id = run_id
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = self.root / f"run-{run_id}" / self.writer
        self.meta = {"run_id": run_id, "writer": self.writer, "pid": os.getpid(), **meta}
        self._lock_fd: int | None = None
        self._created = False
        self._guard = threading.Lock()

    def ensure(self) -> Path:
        """Create the directory (and take its lock) if that was not done yet."""
        with self._guard:
            if not self._created:
                try:
                    self.path.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.path / "owner.lock", os.O_CREAT | os.O_RDWR, 0o644)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._lock_fd = fd
                    tmp = self.path / "meta.json.tmp"
                    tmp.write_text(json.dumps(self.meta))
                    os.replace(tmp, self.path / "meta.json")
                    _fsync_dir(self.path)
                except OSError as exc:
                    raise SpoolError(f"cannot create the spool directory {self.path}: {exc}") from exc
                self._created = True
        return self.path

    @property
    def created(self) -> bool:
        """Whether the directory exists (something was spooled or durable mode is on)."""
        return self._created

    def size(self) -> int:
        """Bytes in the directory's files."""
        if not self._created:
            return 0
        return sum(p.stat().st_size for p in self.path.iterdir() if p.is_file())

    def release(self, remove: bool) -> None:
        """Drop the lock; with ``remove``, delete the directory (nothing left to deliver)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if remove and self._created:
            for p in self.path.iterdir():
                with contextlib.suppress(OSError):
                    p.unlink()
            with contextlib.suppress(OSError):
                self.path.rmdir()
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # the run's directory, when it was the last writer


def writer_dirs(paths: list[Path]) -> Iterator[Path]:
    """Writer directories under each path (a root, a run directory or a writer directory)."""
    for path in paths:
        if (path / "meta.json").exists():
            yield path
            continue
        for meta in sorted(path.glob("*/meta.json")) + sorted(path.glob("*/*/meta.json")):
            yield meta.parent


# -- batches that failed or overflowed --------------------------------------------------


@dataclass
class SpoolEntry:
    """One spooled batch: where it is, and enough to tell it apart."""

    file: Path
    offset: int
    batch_id: str
    count: int


def batch_to_payload(batch: MetricBatch) -> bytes:
    return json.dumps(
        {
            "batch_id": batch.batch_id,
            "names": list(batch.names),
            "values": list(batch.values),
            "dates_us": list(batch.dates_us),
            "metadata": batch.metadata_texts(),
            "cumulative": list(batch.cumulative),
        }
    ).encode()


def payload_to_batch(payload: bytes) -> MetricBatch:
    data = json.loads(payload)
    batch = MetricBatch(
        names=data["names"],
        values=data["values"],
        dates_us=data["dates_us"],
        metadata=data["metadata"],
        cumulative=data["cumulative"],
        batch_id=data["batch_id"],
    )
    batch.checked = True
    return batch


class BatchSpool:
    """Append-only files of batches waiting for the server, oldest first.

    Args:
        directory: the writer's :class:`SpoolDir`.
        max_bytes: the bound on the writer's files (see the module's size policy).
        on_dropped: told how many records the size bound cost.
    """

    def __init__(self, directory: SpoolDir, max_bytes: int, on_dropped: Callable[[int], None]) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self._on_dropped = on_dropped
        self._file_no = 0
        self._file: Path | None = None
        self._fd: int | None = None
        self._pending: dict[Path, list[SpoolEntry]] = {}
        self._lock = threading.Lock()

    def put(self, batch: MetricBatch) -> SpoolEntry:
        """Append ``batch`` and fsync it; the oldest files go if the bound is passed.

        Raises:
            SpoolError: the batch could not be written.
        """
        payload = frame(batch_to_payload(batch))
        with self._lock:
            try:
                path = self._writable(len(payload))
                assert self._fd is not None
                offset = os.lseek(self._fd, 0, os.SEEK_END)
                os.write(self._fd, payload)
                os.fsync(self._fd)
            except OSError as exc:
                raise SpoolError(f"cannot write to the spool {self.dir.path}: {exc}") from exc
            entry = SpoolEntry(path, offset, str(batch.batch_id), len(batch))
            self._pending.setdefault(path, []).append(entry)
            self._enforce_bound()
        return entry

    def _writable(self, size: int) -> Path:
        # Files small enough that the size bound can drop the oldest while keeping most.
        limit = min(_SPOOL_FILE_BYTES, max(64 * 1024, self.max_bytes // 8))
        if self._file is None or self._file.stat().st_size + size > limit:
            self.dir.ensure()
            if self._fd is not None:
                os.close(self._fd)
            self._file_no += 1
            self._file = self.dir.path / f"spool-{self._file_no:06d}.log"
            self._fd = os.open(self._file, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
            _fsync_dir(self.dir.path)
        return self._file

    def _enforce_bound(self) -> None:
        while self.dir.size() > self.max_bytes and len(self._pending) > 1:
            oldest = min(self._pending)
            entries = self._pending.pop(oldest)
            self._on_dropped(sum(e.count for e in entries))
            _log.warning("mlbench-metrics: the spool passed %d bytes; dropped %s", self.max_bytes, oldest.name)
            for path in (oldest, oldest.with_suffix(".acks")):
                with contextlib.suppress(OSError):
                    path.unlink()

    def load(self, entry: SpoolEntry) -> MetricBatch | None:
        """Read a spooled batch back; None if it is gone (dropped by the size bound)."""
        try:
            with open(entry.file, "rb") as f:
                f.seek(entry.offset)
                length, crc = _FRAME.unpack(f.read(_FRAME.size))
                payload = f.read(length)
        except (OSError, struct.error):
            return None
        if zlib.crc32(payload) != crc:
            return None
        return payload_to_batch(payload)

    def ack(self, entry: SpoolEntry) -> None:
        """The batch is stored: record that, and delete its file once all of it is."""
        with self._lock:
            entries = self._pending.get(entry.file)
            if entries is None:
                return
            with contextlib.suppress(ValueError):
                entries.remove(entry)
            try:
                with open(entry.file.with_suffix(".acks"), "a") as f:
                    f.write(entry.batch_id + "\n")
            except OSError:
                pass  # a lost ack only means a re-send, which the server drops
            if not entries and entry.file != self._file:
                del self._pending[entry.file]
                for path in (entry.file, entry.file.with_suffix(".acks")):
                    with contextlib.suppress(OSError):
                        path.unlink()

    def close(self) -> bool:
        """Close the file; True when nothing is left in it (the directory can go)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            empty = all(not entries for entries in self._pending.values())
            if empty and self._file is not None:
                for path in (self._file, self._file.with_suffix(".acks")):
                    with contextlib.suppress(OSError):
                        path.unlink()
            return empty


def read_spool_file(path: Path) -> tuple[list[tuple[int, MetricBatch]], int]:
    """Batches in a spool file not acked yet, and how many records were torn or damaged."""
    data = path.read_bytes()
    acks_path = path.with_suffix(".acks")
    acked = set(acks_path.read_text().split()) if acks_path.exists() else set()
    batches = []
    torn = 0
    for offset, payload in read_frames(data):
        if payload is None:
            torn += 1
            continue
        try:
            batch = payload_to_batch(payload)
        except (ValueError, KeyError):
            torn += 1
            continue
        if batch.batch_id not in acked:
            batches.append((offset, batch))
    return batches, torn


# -- durable mode -------------------------------------------------------------------------


@dataclass
class _Segment:
    number: int
    first_seq: int
    path: Path
    mm: mmap.mmap
    fd: int


@dataclass
class DurableTables:
    """What slots refer to: names, contexts and string values, by id."""

    names: dict[int, str] = field(default_factory=dict)
    contexts: dict[int, dict[str, Any]] = field(default_factory=dict)
    strings: dict[int, str] = field(default_factory=dict)


class DurableLog:
    """Records written straight into memory-mapped files, so a killed process keeps them.

    Writers (:class:`DurableBuffer`, on the training threads) fill one 48-byte slot per
    record and commit it by writing its sequence number last; the page cache keeps it
    when the process dies. Names, contexts and string values go to ``dict.log`` once.
    The dispatcher marks batch ranges and deliveries in the slots' control bytes and
    moves the delivered watermark; ``sync`` replays from there.
    """

    def __init__(self, directory: SpoolDir, max_bytes: int = 1 << 30) -> None:
        self.dir = directory
        self.path = directory.ensure()
        self._keep = max(2, max_bytes // (_SEGMENT_SLOTS * _SLOT))  # segments kept, at most
        self._segments: list[_Segment] = []
        self._end = 0  # the first seq no segment holds yet
        self._names: dict[str, int] = {}
        self._contexts: dict[int, int] = {}
        self._context_refs: list[Any] = []  # keeps contexts alive so their ids stay unique
        self._strings = 0
        self._string_values: dict[int, str] = {}
        self._names_by_id: list[str] = []
        dict_path = self.path / "dict.log"
        self._dict_fd = os.open(dict_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        self._state_fd = os.open(self.path / "state.bin", os.O_CREAT | os.O_RDWR, 0o644)
        os.ftruncate(self._state_fd, mmap.PAGESIZE)
        self._state = mmap.mmap(self._state_fd, mmap.PAGESIZE)
        self._state[0:8] = _STATE_MAGIC
        self.watermark = 0
        self._lock = threading.Lock()  # the dictionary and the segment list
        self.closed = False

    # -- for writers (slow paths: each name, context, string and segment once) ----------

    def _dict_entry(self, entry: dict[str, Any]) -> None:
        os.write(self._dict_fd, frame(json.dumps(entry).encode()))

    def name_id(self, name: str) -> int:
        """The id of ``name``, written to the dictionary the first time."""
        with self._lock:
            known = self._names.get(name)
            if known is None:
                known = len(self._names)
                self._dict_entry({"n": known, "v": name})
                self._names[name] = known
                self._names_by_id.append(name)
            return known

    def context_id(self, ctx: Any) -> int:
        """The id of a logger context (rank, epoch, step, extra metadata, cumulative)."""
        with self._lock:
            known = self._contexts.get(id(ctx))
            if known is None:
                known = len(self._contexts)
                self._dict_entry(
                    {
                        "c": known,
                        "rank": ctx.rank,
                        "epoch": ctx.epoch,
                        "step": ctx.step,
                        "cum": ctx.cumulative,
                        "extra": ctx.extra,
                    }
                )
                self._contexts[id(ctx)] = known
                self._context_refs.append(ctx)
            return known

    def string_id(self, text: str) -> int:
        """Store a string value in the dictionary; returns its id."""
        with self._lock:
            self._strings += 1
            self._dict_entry({"s": self._strings, "v": text})
            self._string_values[self._strings] = text
            return self._strings

    def segment_for(self, seq: int) -> tuple[Any, int, int]:
        """Where slot ``seq`` is written (mapping new segments as needed): (buffer, first, end).

        A slot whose segment the size bound deleted already (its thread was stalled for
        two segments' worth of records) goes to a scratch buffer: the dispatcher finds
        it missing and counts it under ``"spool_full"``.
        """
        with self._lock:
            while self._end <= seq:
                self._new_segment(self._end)
            for segment in reversed(self._segments):
                if segment.first_seq <= seq:
                    return segment.mm, segment.first_seq, segment.first_seq + _SEGMENT_SLOTS
        return bytearray(_SLOT), seq, seq + 1

    def _new_segment(self, first_seq: int) -> None:
        """Map the next segment (under the lock); past the size bound, delete the oldest."""
        number = self._segments[-1].number + 1 if self._segments else 1
        path = self.path / f"seg-{number:06d}.bin"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        os.ftruncate(fd, _SEGMENT_SLOTS * _SLOT)
        self._dict_entry({"seg": number, "first": first_seq})
        self._segments.append(_Segment(number, first_seq, path, mmap.mmap(fd, _SEGMENT_SLOTS * _SLOT), fd))
        self._end = first_seq + _SEGMENT_SLOTS
        if len(self._segments) > self._keep:
            oldest = self._segments.pop(0)
            _log.warning("mlbench-metrics: the durable log passed its size bound; deleted %s", oldest.path.name)
            self._unmap(oldest)

    @staticmethod
    def _unmap(segment: _Segment) -> None:
        segment.mm.close()
        os.close(segment.fd)
        with contextlib.suppress(OSError):
            segment.path.unlink()

    # -- the dispatcher ---------------------------------------------------------------------

    def _slot(self, seq: int) -> tuple[mmap.mmap, int] | None:
        with self._lock:
            for segment in reversed(self._segments):
                if seq >= segment.first_seq:
                    if seq < segment.first_seq + _SEGMENT_SLOTS:
                        return segment.mm, (seq - segment.first_seq) * _SLOT
                    return None
        return None

    def _set_control(self, seq: int, bits: int) -> None:
        slot = self._slot(seq)
        if slot is not None:
            mm, offset = slot
            mm[offset + _CONTROL_AT] = mm[offset + _CONTROL_AT] | bits

    def mark_batch(self, first: int, end: int) -> None:
        """Record that records ``first..end-1`` travel as one batch (before it is sent)."""
        self._set_control(end - 1, _CTL_END)
        self._set_control(first, _CTL_START)

    def mark_delivered(self, first: int) -> None:
        """Record that the batch starting at ``first`` is stored."""
        self._set_control(first, _CTL_DELIVERED)

    def set_watermark(self, seq: int) -> None:
        """Everything before ``seq`` is delivered: persist that, delete spent segments."""
        self.watermark = seq
        self._state[8:16] = struct.pack("<Q", seq)
        with self._lock:
            spent = [s for s in self._segments[:-1] if s.first_seq + _SEGMENT_SLOTS <= seq]
            self._segments = [s for s in self._segments if s not in spent]
            for segment in spent:
                self._unmap(segment)

    def read(self, first: int, end: int) -> tuple[list[Any], ...]:
        """Records ``first..end-1`` as columns: (names, values, times_ns, steps, contexts).

        What the dispatcher encodes and sends. Slots whose segment the size bound deleted
        are missing from the answer. The slots are copied under the lock and unpacked
        at C speed; only non-float values (rare in training metrics) are unpacked again
        one by one.
        """
        with self._lock:
            pieces = [
                segment.mm[(lo - segment.first_seq) * _SLOT : (hi - segment.first_seq) * _SLOT]
                for segment in self._segments
                for lo, hi in [(max(first, segment.first_seq), min(end, segment.first_seq + _SEGMENT_SLOTS))]
                if lo < hi
            ]
        name_ids: list[int] = []
        values: list[Any] = []
        times: list[int] = []
        steps: list[int | None] = []
        context_ids: list[int] = []
        for data in pieces:
            words = memoryview(data).cast("q")  # six per slot
            halves = words.cast("B").cast("I")  # twelve per slot
            n = len(words) // 6
            kinds = data[_KIND_AT::_SLOT]
            column: list[Any] = words.cast("B").cast("d")[0::6].tolist()
            if kinds.count(_KIND_FLOAT) != n:
                integers = words[0::6].tolist()
                for i, kind in enumerate(kinds):
                    if kind == _KIND_INT:
                        column[i] = integers[i]
                    elif kind == _KIND_STR:
                        column[i] = self._string_values.get(integers[i], "")
            values += column
            times += words[1::6].tolist()
            stepped = data[_FLAGS_AT::_SLOT].translate(_STEP_BIT)
            unstepped = stepped.count(0)
            if unstepped == n:
                steps += [None] * n
            elif unstepped == 0:
                steps += words[2::6].tolist()
            else:
                steps += [step if bit else None for step, bit in zip(words[2::6].tolist(), stepped)]
            name_ids += halves[6::12].tolist()
            context_ids += halves[7::12].tolist()
        if not values:
            return [], [], [], [], []
        return _pick(self._names_by_id, name_ids), values, times, steps, _pick(self._context_refs, context_ids)

    def batch_id(self, first: int, end: int) -> str:
        """The id a durable batch is sent under: the same in every replay."""
        return f"{self.dir.writer}:{first}-{end}"

    def close(self) -> None:
        """Unmap everything (the files stay for ``sync`` unless the directory is removed)."""
        if self.closed:
            return
        self.closed = True
        with self._lock:
            segments, self._segments = self._segments, []
            for segment in segments:
                segment.mm.flush()
                segment.mm.close()
                os.close(segment.fd)
        self._state.close()
        os.close(self._state_fd)
        os.close(self._dict_fd)


@dataclass
class DurableRecord:
    """One record read back from a durable log."""

    seq: int
    name: str
    value: Any
    time_ns: int
    step: int | None
    context: dict[str, Any]
    control: int
    segment: Path
    offset: int


def read_durable(path: Path) -> tuple[list[DurableRecord], int, int]:
    """Every committed record after the watermark, the watermark, and how many slots were torn.

    A torn slot is a ``log()`` call killed halfway: it had not returned, so nothing was
    promised for it; there is at most one per logging thread.
    """
    tables = DurableTables()
    segments: dict[int, int] = {}
    dict_path = path / "dict.log"
    if dict_path.exists():
        for _, payload in read_frames(dict_path.read_bytes()):
            if payload is None:
                continue
            entry = json.loads(payload)
            if "n" in entry:
                tables.names[entry["n"]] = entry["v"]
            elif "c" in entry:
                tables.contexts[entry["c"]] = entry
            elif "s" in entry:
                tables.strings[entry["s"]] = entry["v"]
            elif "seg" in entry:
                segments[entry["seg"]] = entry["first"]
    watermark = 0
    state = path / "state.bin"
    if state.exists():
        raw = state.read_bytes()
        if raw[:8] == _STATE_MAGIC:
            (watermark,) = struct.unpack_from("<Q", raw, 8)
    records: list[DurableRecord] = []
    torn = 0
    for number in sorted(segments):
        seg_path = path / f"seg-{number:06d}.bin"
        if not seg_path.exists():
            continue
        data = seg_path.read_bytes()
        first = segments[number]
        slots = len(data) // _SLOT
        i = 0
        while i < slots:
            seq = first + i
            offset = i * _SLOT
            (commit,) = _COMMIT.unpack_from(data, offset + _COMMIT_AT)
            if commit != seq + 1:
                # Not committed: a log() call that never returned (torn when half written).
                # Threads take slots before they fill them, so a later slot may be
                # committed; past a window with none, this is the end of the data.
                if any(data[offset : offset + _SLOT]):
                    torn += 1
                ahead = _next_commit(data, first, i + 1, min(slots, i + 1 + _GAP_WINDOW))
                if ahead is None:
                    break
                i = ahead
                continue
            i += 1
            if seq < watermark:
                continue
            kind = data[offset + _KIND_AT]
            value, time_ns, step, name_id, ctx_id, _, flags, _ = (
                _SLOT_F if kind == _KIND_FLOAT else _SLOT_I
            ).unpack_from(data, offset)
            if kind == _KIND_STR:
                value = tables.strings.get(value, "")
            records.append(
                DurableRecord(
                    seq,
                    tables.names.get(name_id, f"unknown-{name_id}"),
                    value,
                    time_ns,
                    None if not flags & _FLAG_STEP else step,
                    tables.contexts.get(ctx_id, {}),
                    data[offset + _CONTROL_AT],
                    seg_path,
                    offset,
                )
            )
    return records, watermark, torn


def _pick(table: list[Any], ids: list[int]) -> list[Any]:
    """``[table[i] for i in ids]`` at C speed."""
    return [table[ids[0]]] if len(ids) == 1 else list(operator.itemgetter(*ids)(table))


def _next_commit(data: bytes, first: int, start: int, stop: int) -> int | None:
    """The index of the first committed slot in ``start..stop-1``, if any."""
    for i in range(start, stop):
        (commit,) = _COMMIT.unpack_from(data, i * _SLOT + _COMMIT_AT)
        if commit == first + i + 1:
            return i
    return None


def durable_metadata(context: dict[str, Any], step: int | None) -> str:
    """The metadata text of a durable record, as the live logger would have sent it."""
    head = "{" if context.get("rank") is None else f'{{"rank": {context["rank"]}, '
    step = step if step is not None else context.get("step")
    text = f'{head}"epoch": {context.get("epoch", 0)}'
    if step is not None:
        text += f', "step": {step}'
    return text + f"{context.get('extra', '')}}}"


def _durable_batches(records: list[DurableRecord], batch_size: int) -> Iterator[list[DurableRecord]]:
    """The batches a replay sends: each range the dispatcher marked (it may have sent it
    under the range's id), then the records it never batched, in new ranges."""
    i = 0
    n = len(records)
    while i < n:
        if records[i].control & _CTL_START:
            j = i
            while j < n and not records[j].control & _CTL_END and (j == i or not records[j].control & _CTL_START):
                j += 1
            contiguous = j < n and records[j].seq - records[i].seq == j - i
            if contiguous and records[j].control & _CTL_END and (j == i or not records[j].control & _CTL_START):
                yield records[i : j + 1]
                i = j + 1
                continue
        j = i + 1
        while (
            j < n
            and not records[j].control & _CTL_START
            and j - i < batch_size
            and records[j].seq == records[j - 1].seq + 1
        ):
            j += 1
        yield records[i:j]
        i = j


@dataclass
class SyncReport:
    """What ``sync`` did with one writer directory."""

    path: Path
    run_id: int
    delivered: int = 0
    already_stored: int = 0
    failed: int = 0
    torn: int = 0
    busy: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is left undelivered (a live writer's directory is left alone)."""
        return not self.failed and not self.torn and not self.errors


def sync_writer(
    path: Path,
    client: Any,
    *,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> SyncReport:
    """Deliver what one writer directory holds, then delete what was delivered.

    Safe to run again (and alongside ``sync`` on other directories): acknowledgements and
    delivered marks are written as it goes, batches keep their ids, and a directory whose
    writer is alive, or that another ``sync`` holds, is skipped.

    Args:
        path: a writer directory (with ``meta.json``).
        client: an :class:`~mlbench_metrics.ApiClient` for the run's server.
        batch_size: records per batch for ranges a dead writer never batched.
        progress: told how many records each delivered batch held.
    """
    meta = json.loads((path / "meta.json").read_text())
    report = SyncReport(path, int(meta["run_id"]))
    try:
        lock = os.open(path / "owner.lock", os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        report.errors.append(f"cannot open {path / 'owner.lock'}: {exc}")
        return report
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            report.busy = True
            return report
        _sync_spool_files(path, client, report, progress)
        if (path / "state.bin").exists():
            _sync_durable(path, client, report, batch_size, progress)
        if report.ok:
            for p in path.iterdir():
                with contextlib.suppress(OSError):
                    p.unlink()
            with contextlib.suppress(OSError):
                path.rmdir()
            with contextlib.suppress(OSError):
                path.parent.rmdir()
    finally:
        os.close(lock)
    return report


def _post(client: Any, report: SyncReport, batch: MetricBatch, progress: Callable[[int], None] | None) -> bool:
    result = client.post_metrics(report.run_id, batch, batch_id=batch.batch_id).result()
    if result.ok:
        if result.duplicate:
            report.already_stored += len(batch)
        else:
            report.delivered += result.stored
        if progress is not None:
            progress(len(batch))
        return True
    report.failed += len(result.failed)
    report.errors.append(str(result.error))
    return False


def _sync_spool_files(path: Path, client: Any, report: SyncReport, progress: Callable[[int], None] | None) -> None:
    for spool_file in sorted(path.glob("spool-*.log")):
        batches, torn = read_spool_file(spool_file)
        if torn:
            report.torn += torn
            report.errors.append(f"{spool_file.name}: {torn} torn or damaged record(s) skipped")
        all_sent = True
        for _, batch in batches:
            if _post(client, report, batch, progress):
                with open(spool_file.with_suffix(".acks"), "a") as acks:
                    acks.write(f"{batch.batch_id}\n")
            else:
                all_sent = False
        if all_sent and not torn:
            for p in (spool_file, spool_file.with_suffix(".acks")):
                with contextlib.suppress(OSError):
                    p.unlink()


def _sync_durable(
    path: Path, client: Any, report: SyncReport, batch_size: int, progress: Callable[[int], None] | None
) -> None:
    records, _, torn = read_durable(path)
    if torn:  # a note, not a failure: that log() call never returned, so nothing was promised
        _log.info("%s: the last durable slot was torn (killed inside log()); skipped", path)
    writer = path.name
    state_fd = os.open(path / "state.bin", os.O_RDWR)
    try:
        contiguous = True
        for chunk in _durable_batches(records, batch_size):
            first, end = chunk[0].seq, chunk[-1].seq + 1
            if chunk[0].control & _CTL_DELIVERED:
                done = True
            else:
                batch = MetricBatch(
                    names=[r.name for r in chunk],
                    values=[r.value for r in chunk],
                    dates_us=[r.time_ns // 1000 for r in chunk],
                    metadata=[durable_metadata(r.context, r.step) for r in chunk],
                    cumulative=[bool(r.context.get("cum")) for r in chunk],
                    batch_id=f"{writer}:{first}-{end}",
                )
                batch.checked = True
                done = _post(client, report, batch, progress)
                if done:
                    with open(chunk[0].segment, "r+b") as seg:
                        seg.seek(chunk[0].offset + _CONTROL_AT)
                        seg.write(bytes([chunk[0].control | _CTL_DELIVERED]))
            contiguous = contiguous and done
            if contiguous:
                os.pwrite(state_fd, struct.pack("<Q", end), 8)
    finally:
        os.close(state_fd)


# -- what the dispatcher talks to ---------------------------------------------------------


class SpoolStore:
    """Failed and overflowing batches kept in a :class:`BatchSpool` until delivered."""

    durable: Final = False

    def __init__(self, directory: SpoolDir, max_bytes: int, on_dropped: Callable[[int], None]) -> None:
        self.dir = directory
        self.spool = BatchSpool(directory, max_bytes, on_dropped)

    def batch_id(self, first: int, end: int) -> str | None:
        """Spooled batches keep the id the dispatcher gave them."""
        return None

    def cut(self, first: int, end: int) -> None:
        """Nothing to record: a batch's id travels with it into the spool."""

    def park(self, batch: MetricBatch) -> Any:
        """Write ``batch`` to disk; returns what :meth:`load` takes."""
        return self.spool.put(batch)

    def reload(self, handle: Any, first: int, end: int, batch_id: str) -> MetricBatch | None:
        """Read a parked batch back (None when the size bound dropped it)."""
        return self.spool.load(handle)

    def delivered(self, handle: Any, first: int) -> None:
        """A parked batch is stored: forget it."""
        if handle is not None:
            self.spool.ack(handle)

    def set_watermark(self, seq: int) -> None:
        """Nothing to do: only durable logs keep a watermark."""

    def finish(self, everything_delivered: bool) -> None:
        """Close the spool; remove the directory when nothing in it waits."""
        empty = self.spool.close()
        self.dir.release(remove=everything_delivered and empty)


class DurableStore:
    """A :class:`DurableLog`: every record is on disk already; batches only get marked."""

    durable: Final = True

    def __init__(self, log: DurableLog, encode: Callable[..., MetricBatch]) -> None:
        self.log = log
        self.dir = log.dir
        self._encode = encode

    def batch_id(self, first: int, end: int) -> str | None:
        """The range's own id, the same in every replay."""
        return self.log.batch_id(first, end)

    def cut(self, first: int, end: int) -> None:
        """Mark the range as one batch before it is sent."""
        self.log.mark_batch(first, end)

    def park(self, batch: MetricBatch) -> Any:
        """Nothing to write: the records are in the log; the handle is the range."""
        return True

    def reload(self, handle: Any, first: int, end: int, batch_id: str) -> MetricBatch | None:
        """Read the range back from the log and encode it (None if none of it is left)."""
        columns = self.log.read(first, end)
        return self._encode(*columns, batch_id) if columns[0] else None

    def delivered(self, handle: Any, first: int) -> None:
        """Mark the batch starting at ``first`` delivered."""
        self.log.mark_delivered(first)

    def set_watermark(self, seq: int) -> None:
        """Everything before ``seq`` is delivered."""
        if seq > self.log.watermark:
            self.log.set_watermark(seq)

    def finish(self, everything_delivered: bool) -> None:
        """Unmap the log; remove the directory when everything was delivered."""
        self.log.close()
        self.dir.release(remove=everything_delivered)


class DurableBuffer(collections.deque):  # type: ignore[type-arg]
    """The training thread's buffer in durable mode: each record goes to disk, then to memory.

    It *is* the dispatcher's deque (so ``len()`` and ``popleft()`` stay C calls). A
    record is written by :attr:`write` (``append`` of a record tuple calls it too;
    ``MetricsLogger.log`` calls it directly, saving the tuple): it takes the record's
    slot number from an ``itertools.count`` (atomic under the GIL, so no lock on the hot
    path), writes and commits the slot in one ``pack_into`` before it returns (a kill
    after that cannot lose it), and queues only the slot number: the dispatcher reads
    the records back from the log when it sends them, and memory holds no record object
    the garbage collector would walk. Threads may queue in a slightly different order
    than they numbered; the dispatcher batches by slot number, not queue order. Names,
    contexts, strings and segments are registered once each, under the log's lock. The
    log is created on the first record, so a forked child that never logs writes nothing.
    """

    # Slots, not a __dict__: on a deque subclass, dict attributes are the slow kind.
    __slots__ = ("log", "write")

    def __init__(self, factory: Callable[[], DurableLog]) -> None:
        super().__init__()
        self.log: DurableLog | None = None
        self.write: Callable[[str, Any, int, int | None, Any], None] = _durable_writer(self, factory)

    def append(self, record: Any) -> None:
        """Write a record tuple ``(name, value, time_ns, step, context)``; queue anything else."""
        if type(record) is tuple:
            self.write(*record)
        else:  # a flush marker
            _deque_append(self, record)


def _durable_writer(
    buffer: DurableBuffer, factory: Callable[[], DurableLog]
) -> Callable[[str, Any, int, int | None, Any], None]:
    """The hot path of :class:`DurableBuffer`: a closure, so its state is in cells (the
    fastest variables Python has) and only the first use of a name, a context or a
    segment takes a slow path."""
    names: dict[str, int] = {}
    contexts: dict[int, tuple[int, int]] = {}  # id(ctx) -> (context id, flags)
    last: tuple[Any, tuple[int, int]] = (None, (0, 0))  # the last context seen
    newest: tuple[Any, int, int] = (None, 0, 0)  # the newest segment: (map, first, end)
    next_seq = itertools.count().__next__
    lock = threading.Lock()
    pack_float, pack_int = _SLOT_F.pack_into, _SLOT_I.pack_into

    def log() -> DurableLog:
        with lock:
            if buffer.log is None:
                buffer.log = factory()
            return buffer.log

    def name_id(name: str) -> int:
        known = names[name] = log().name_id(name)
        return known

    def context(ctx: Any) -> tuple[int, int]:
        nonlocal last
        known = contexts.get(id(ctx))
        if known is None:
            known = contexts[id(ctx)] = (log().context_id(ctx), _FLAG_CUMULATIVE if ctx.cumulative else 0)
        last = (ctx, known)
        return known

    def segment(seq: int) -> tuple[Any, int]:
        nonlocal newest
        mm, first, end = log().segment_for(seq)
        if end > newest[2]:
            newest = (mm, first, end)
        return mm, first

    def write(name: str, value: Any, time_ns: int, step: int | None, ctx: Any) -> None:
        """Persist one record, then queue its slot number.

        Raises:
            ValueError: ``step`` does not fit 64 bits (nothing is written then).
        """
        nid = names.get(name)
        if nid is None:
            nid = name_id(name)
        seen = last
        context_id, flags = seen[1] if ctx is seen[0] else context(ctx)
        if step is None:
            step = _NO_STEP
        elif -9223372036854775808 < step <= 9223372036854775807:
            flags |= _FLAG_STEP
        else:
            raise ValueError(f"step {step} does not fit 64 bits (durable mode stores it in one)")
        vtype = type(value)
        if vtype is float:
            pack, kind = pack_float, _KIND_FLOAT
        elif vtype is int and -9223372036854775808 <= value <= 9223372036854775807:
            pack, kind = pack_int, _KIND_INT
        else:  # a string, or an integer beyond 64 bits
            pack, kind, value = pack_int, _KIND_STR, log().string_id(str(value))
        # Everything that can fail has; from here the slot is taken and always committed.
        seq = next_seq()
        mm, first, end = newest
        if not first <= seq < end:
            mm, first = segment(seq)
        pack(mm, (seq - first) * _SLOT, value, time_ns, step, nid, context_id, kind, flags, seq + 1)
        _deque_append(buffer, seq)

    return write


_deque_append: Final = collections.deque.append
