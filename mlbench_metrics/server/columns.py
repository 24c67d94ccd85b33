"""A run's series as columns for charts: chunks merged into one series, and a cache of decoded chunks.

Charts need the dates and values of every point of a series (to downsample them) and the
metadata and flags of only the few hundred points a downsample keeps. :func:`merge_columns`
joins a series' decoded chunks (:mod:`.chunks`) into :class:`SeriesColumns`, which finds
those few points' metadata in their chunks on demand; :class:`ChunkCache` keeps decoded
chunks so a chart seen again reads nothing from the database but what arrived since.

No threads are started here; nothing here touches the database.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Sequence

from .chunks import Chunk, decode_chunk


class _Key(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def first_date(self) -> int: ...
    @property
    def last_date(self) -> int: ...
    @property
    def points(self) -> int: ...


__all__ = ["ChunkCache", "SeriesColumns", "merge_columns", "windows"]


class ChunkCache:
    """Decoded chunks by owner (run or pod) and id, least recently used dropped first, within a memory bound.

    Chunks never change once written (a deleted run's are never read again, and ids
    only grow), so an entry never goes stale. Ids are unique within an owner; two
    processes writing to one database may give two owners' chunks the same id, hence
    the owner in the key. Thread-safe.

    Args:
        max_bytes: what the decoded chunks may take, roughly (16 bytes a point for
            numeric values, plus their metadata text).
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[tuple[int, int], Chunk] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def lookup(self, owner: int, chunk_ids: Iterable[int]) -> dict[int, Chunk]:
        """The chunks of ``owner`` among ``chunk_ids`` decoded before (now the most recently used)."""
        found = {}
        with self._lock:
            for chunk_id in chunk_ids:
                chunk = self._chunks.get((owner, chunk_id))
                if chunk is not None:
                    self._chunks.move_to_end((owner, chunk_id))
                    found[chunk_id] = chunk
        return found

    def decode(self, owner: int, chunk_id: int, data: str | bytes, body: bytes | None) -> Chunk:
        """Decode chunk ``chunk_id`` of ``owner`` from its row (see :func:`.chunks.decode_chunk`) and keep it."""
        chunk = decode_chunk(chunk_id, data, body)
        with self._lock:
            if (owner, chunk_id) not in self._chunks:
                self._chunks[owner, chunk_id] = chunk
                self._bytes += chunk.size()
                while self._bytes > self.max_bytes and self._chunks:
                    _, old = self._chunks.popitem(last=False)
                    self._bytes -= old.size()
        return chunk


@dataclass
class SeriesColumns:
    """One series' points as columns, ordered by (date, arrival), cut to a date range.

    Attributes:
        name: the series' name.
        dates: each point's date in microseconds since the epoch (ascending).
        values: each point's value as stored: text, or a number as it was sent.
        cursor: the highest chunk id read (chunk ids grow with every arrival).
    """

    name: str
    dates: Sequence[int]
    values: Sequence[Any]
    cursor: int
    _chunks: list[Chunk] = field(repr=False, default_factory=list)
    # Where each point came from: (chunk index, position) pairs when chunks had to be
    # sorted, else None and the chunk starts (``_starts``) locate a point by bisection.
    _origin: list[tuple[int, int]] | None = field(repr=False, default=None)
    _starts: list[int] = field(repr=False, default_factory=list)
    _offset: int = field(repr=False, default=0)

    def __len__(self) -> int:
        return len(self.dates)

    def _locate(self, indices: Sequence[int]) -> dict[int, list[tuple[int, int]]]:
        """Group point indices by chunk: chunk index -> [(index, position in chunk)]."""
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for i in indices:
            j = i + self._offset
            if self._origin is not None:
                chunk, pos = self._origin[j]
            else:
                chunk = bisect_right(self._starts, j) - 1
                pos = j - self._starts[chunk]
            by_chunk.setdefault(chunk, []).append((i, pos))
        return by_chunk

    def details(self, indices: Sequence[int]) -> tuple[list[str], list[bool]]:
        """The metadata texts and cumulative flags of the points at ``indices``."""
        metadata: dict[int, str] = {}
        cumulative: dict[int, bool] = {}
        for chunk_index, pairs in self._locate(indices).items():
            chunk = self._chunks[chunk_index]
            positions = [pos for _, pos in pairs]
            for (i, _), text, flag in zip(pairs, chunk.metadata(positions), chunk.cumulative(positions)):
                metadata[i] = text
                cumulative[i] = flag
        return [metadata[i] for i in indices], [cumulative[i] for i in indices]


def merge_columns(name: str, chunks: Sequence[Chunk], since_us: int | None, until_us: int | None) -> SeriesColumns:
    """One series from its chunks, given ordered by first date, then id.

    Points come out in (date, arrival) order, as :meth:`.store.Store.series` gives them:
    chunks that do not overlap are concatenated, overlapping ones sorted. Dates come as an
    int64 array; values as one array when every chunk holds an array of one type (floats,
    or whole numbers), else as a list.
    """
    ordered = True
    previous_last: int | None = None
    for chunk in chunks:  # the writer sorts the points within a chunk by date
        first, last = chunk.dates[0], chunk.dates[-1]
        if previous_last is not None and first <= previous_last:
            ordered = False
        previous_last = last if previous_last is None else max(previous_last, last)
    dates: Any = array("q")
    codes = {c.values.typecode if isinstance(c.values, array) else "" for c in chunks}
    code = codes.pop() if len(codes) == 1 else ""
    values: Any = array(code) if code else []
    origin: list[tuple[int, int]] | None = None
    starts: list[int] = []
    if ordered:
        for chunk in chunks:
            starts.append(len(dates))
            dates += chunk.dates
            values += chunk.values if code or isinstance(chunk.values, list) else list(chunk.values)
    else:
        keyed = [(d, c.id, k, ci) for ci, c in enumerate(chunks) for k, d in enumerate(c.dates)]
        keyed.sort()
        dates = [item[0] for item in keyed]
        values = [chunks[item[3]].values[item[2]] for item in keyed]
        origin = [(item[3], item[2]) for item in keyed]
    lo = 0 if since_us is None else bisect_left(dates, since_us)
    hi = len(dates) if until_us is None else bisect_right(dates, until_us)
    cursor = max((c.id for c in chunks), default=0)
    if lo > 0 or hi < len(dates):
        dates, values = dates[lo:hi], values[lo:hi]
    return SeriesColumns(name, dates, values, cursor, list(chunks), origin, starts, lo)


def windows(keys: Iterable[_Key], points: int) -> Iterator[tuple[str, list[Any]]]:
    """Cut chunk keys, in (name, first date, id) order, into ``(name, keys)`` windows of about
    ``points`` points whose chunks a series can be merged from one window at a time.

    A window ends only where the next chunk of its series starts after every date the
    window holds, so merging each window (:func:`merge_columns`) and concatenating gives
    the series in (date, arrival) order. Chunks that overlap (batches that arrived out of
    order) stay in one window, however many points that makes.
    """
    name: str | None = None
    group: list[Any] = []
    total = 0
    last = 0
    for key in keys:
        if group and (key.name != name or (total >= points and key.first_date > last)):
            assert name is not None
            yield name, group
            group, total = [], 0
        if not group:
            name, last = key.name, key.last_date
        group.append(key)
        total += key.points
        last = max(last, key.last_date)
    if group:
        assert name is not None
        yield name, group
