"""The chunk format: writing a batch's series as chunks, reading them as points or columns.

:mod:`.store` keeps one row per (batch, metric name); :func:`encode_chunks` makes its
``data``, the series' points as one JSON object ``{"d": dates_us, "v": values, "m":
metadata, "c": cumulative}`` (``m`` and ``c`` are one value for the whole chunk or a
list), and :func:`decode_points` reads them back. The dashboard-shaped reads decode all of it into a tuple per point;
charts need only dates and values of every point, and metadata (for step and epoch) of
the few hundred points a downsample keeps. Decoding a million points' metadata costs
more than a second, so this module cuts each chunk's text at its ``"v"``, ``"m"`` and
``"c"`` keys and decodes the parts separately.

Why cutting is safe: inside a JSON string every ``"`` is escaped, so a ``,"m":`` whose
quote follows the comma directly can only be structure; the date and value lists hold
numbers and strings, never objects, so the first such key after ``"v"`` is the top-level
one. Any text that does not look like the writer's layout is decoded whole instead.

No threads are started here; nothing here touches the database.
"""

from __future__ import annotations

import json
import re
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter, le
from typing import Any, Final, Iterable, Sequence

__all__ = [
    "Chunk",
    "ChunkCache",
    "Columns",
    "Point",
    "SeriesColumns",
    "decode_points",
    "encode_chunks",
    "merge_columns",
]

# A batch in columns: names, dates (us), values, metadata, cumulative flags; each a list
# or an iterable of the batch's length (metadata and flags are often ``itertools.repeat``).
Columns = tuple[Iterable[str], Iterable[int], Iterable[str], Iterable[str], Iterable[bool]]

# A point as the dashboard-shaped reads return it: (date_us, value, cumulative, metadata).
Point = tuple[int, str, bool, str]

_HEAD: Final = re.compile(r'\{\s*"d"\s*:\s*')
_KEY_V: Final = re.compile(r',\s*"v"\s*:\s*')
_KEY_M: Final = re.compile(r',\s*"m"\s*:\s*')
_KEY_C: Final = re.compile(r',\s*"c"\s*:\s*')
# Between two elements of a list of strings: a closing quote, a comma, an opening quote.
_STRING_SEPARATOR: Final = re.compile(r'"\s*,\s*"')


def _cut_compact(text: str) -> tuple[str, str, str, str] | None:
    """The texts of d, v, m and c in the writer's compact layout, found at C speed; else None."""
    if not text.startswith('{"d":'):
        return None
    v = text.find(',"v":', 5)
    m = text.find(',"m":', v + 5) if v > 0 else -1
    c = text.find(',"c":', m + 5) if m > 0 else -1
    if c < 0 or not text.endswith("}"):
        return None
    return text[5:v], text[v + 5 : m], text[m + 5 : c], text[c + 5 : -1]


def _cut_spaced(text: str) -> tuple[str, str, str, str] | None:
    """As :func:`_cut_compact`, for any spacing (single posts are stored with spaces)."""
    head = _HEAD.match(text)
    v = _KEY_V.search(text, head.end()) if head else None
    m = _KEY_M.search(text, v.end()) if v else None
    c = _KEY_C.search(text, m.end()) if m else None
    end = text.rfind("}")
    if head is None or v is None or m is None or c is None or end < c.end():
        return None
    return text[head.end() : v.start()], text[v.end() : m.start()], text[m.end() : c.start()], text[c.end() : end]


class Chunk:
    """One stored chunk's dates and values, decoded; its metadata and flags stay text until asked for.

    Args:
        chunk_id: the chunk's id (its arrival order).
        text: the chunk's stored ``data``.
    """

    __slots__ = ("cumulative_text", "dates", "id", "metadata_text", "values")

    def __init__(self, chunk_id: int, text: str) -> None:
        self.id = chunk_id
        cut = _cut_compact(text) or _cut_spaced(text)
        if cut is None:
            whole = json.loads(text)  # not the writer's layout: decode it the slow way
            self.dates: Sequence[int] = whole["d"]
            self.values: Sequence[Any] = whole["v"]
            self.metadata_text = json.dumps(whole["m"])
            self.cumulative_text = json.dumps(whole["c"])
            self._compact()
            return
        d_text, v_text, self.metadata_text, self.cumulative_text = cut
        self.dates = json.loads(d_text)
        self.values = json.loads(v_text)
        self._compact()

    def _compact(self) -> None:
        """Dates as an int64 array and float values as a double array: 16 bytes a point in the cache."""
        self.dates = array("q", self.dates)
        if all(type(v) is float for v in self.values):
            self.values = array("d", self.values)

    def size(self) -> int:
        """Roughly what this chunk holds in memory, in bytes (for the cache's bound)."""
        values = len(self.values) * (8 if isinstance(self.values, array) else 60)
        return len(self.dates) * 8 + values + len(self.metadata_text) + len(self.cumulative_text)

    def metadata(self, positions: Sequence[int]) -> list[str]:
        """The metadata texts of the points at ``positions`` in this chunk."""
        text = self.metadata_text.strip()
        if not text.startswith("["):
            one = json.loads(text)
            return [one] * len(positions)
        inner = text[1:-1].strip()
        if len(positions) * 8 > len(self.dates):
            every: list[str] = json.loads(text)
            return [every[p] for p in positions]
        # A list of strings: split it at the separators and decode only the strings asked for.
        body = inner[1:-1]
        # The writer's compact layout separates with '","' (str.split, at C speed); any other
        # spacing goes through the pattern.
        parts = _STRING_SEPARATOR.split(body) if '", "' in body else body.split('","')
        if len(parts) != len(self.dates):
            every = json.loads(text)
            return [every[p] for p in positions]
        return [json.loads(f'"{parts[p]}"') for p in positions]

    def cumulative(self, positions: Sequence[int]) -> list[bool]:
        """The cumulative flags of the points at ``positions`` in this chunk."""
        flags = json.loads(self.cumulative_text)
        if isinstance(flags, list):
            return [bool(flags[p]) for p in positions]
        return [bool(flags)] * len(positions)


class ChunkCache:
    """Decoded chunks by id, least recently used dropped first, within a memory bound.

    Chunks never change once written (a deleted run's are never read again, and ids
    only grow within a process), so an entry never goes stale. Thread-safe.

    Args:
        max_bytes: what the decoded chunks may take, roughly (16 bytes a point for
            float values, plus their metadata text).
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._chunks: OrderedDict[int, Chunk] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def lookup(self, chunk_ids: Iterable[int]) -> dict[int, Chunk]:
        """The chunks among ``chunk_ids`` decoded before (now the most recently used)."""
        found = {}
        with self._lock:
            for chunk_id in chunk_ids:
                chunk = self._chunks.get(chunk_id)
                if chunk is not None:
                    self._chunks.move_to_end(chunk_id)
                    found[chunk_id] = chunk
        return found

    def decode(self, chunk_id: int, text: str) -> Chunk:
        """Decode chunk ``chunk_id`` from its stored ``text`` and keep it."""
        chunk = Chunk(chunk_id, text)
        with self._lock:
            if chunk_id not in self._chunks:
                self._chunks[chunk_id] = chunk
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
    int64 array; values as a double array when every one is a float, else as a list.
    """
    ordered = True
    previous_last: int | None = None
    for chunk in chunks:  # the writer sorts the points within a chunk by date
        first, last = chunk.dates[0], chunk.dates[-1]
        if previous_last is not None and first <= previous_last:
            ordered = False
        previous_last = last if previous_last is None else max(previous_last, last)
    dates: Any = array("q")
    floats = all(isinstance(c.values, array) for c in chunks)
    values: Any = array("d") if floats else []
    origin: list[tuple[int, int]] | None = None
    starts: list[int] = []
    if ordered:
        for chunk in chunks:
            starts.append(len(dates))
            dates += chunk.dates
            values += chunk.values if floats or isinstance(chunk.values, list) else list(chunk.values)
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


# -- writing chunks, and reading them back as points -------------------------------


def encode_chunks(columns: Columns) -> list[tuple[str, int, int, int, str]]:
    """Split a batch's columns into one chunk per name: ``(name, first, last, count, data)``.

    Points keep their arrival order within a name unless their dates are out of order,
    in which case they are sorted by date (stably, so equal dates keep arrival order).
    Values are kept as they came, text or numbers; reads turn numbers into ``str()`` text.
    This is the server's hottest loop: grouping is one dict step per point, and the
    columns of each group are picked out at C speed.
    """
    names: list[str] = list(columns[0])
    dates: list[int] = list(columns[1])
    values: list[Any] = list(columns[2])
    metadata: list[str] = list(columns[3])
    cumulative: list[bool] = list(columns[4])
    n = len(names)
    by_name: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        by_name.setdefault(name, []).append(i)
    one_meta = metadata[0] if metadata and metadata.count(metadata[0]) == n else None
    one_cum = cumulative[0] if cumulative and cumulative.count(cumulative[0]) == n else None
    out = []
    for name, idx in by_name.items():
        pick = _picker(idx)
        d = dates if len(idx) == n else pick(dates)
        if not all(map(le, d, islice(d, 1, None))):
            idx = sorted(idx, key=dates.__getitem__)
            pick = _picker(idx)
            d = pick(dates)
        data = {
            "d": d,
            "v": values if len(idx) == n and d is dates else pick(values),
            "m": one_meta if one_meta is not None else pick(metadata),
            "c": one_cum if one_cum is not None else pick(cumulative),
        }
        out.append((name, d[0], max(d[0], d[-1]), len(idx), json.dumps(data, separators=(",", ":"))))
    return out


def _picker(idx: list[int]) -> Any:
    """A C-speed ``lambda seq: [seq[i] for i in idx]``."""
    if len(idx) == 1:
        return lambda seq: [seq[idx[0]]]
    getter = itemgetter(*idx)
    return lambda seq: list(getter(seq))


def decode_points(chunks: list[Any], since_us: int | None, until_us: int | None) -> list[Point]:
    """The points of one series' chunks ``(name, first, last, id, data)`` in (date, arrival) order.

    Chunks come ordered by first date; when none overlaps the one before, their points
    are already in order and are concatenated, otherwise all are sorted.
    """
    ordered = True
    previous_last: int | None = None
    decoded = []
    for _, first, last, chunk_id, data in chunks:
        if previous_last is not None and first <= previous_last:
            ordered = False
        previous_last = last if previous_last is None else max(previous_last, last)
        c = json.loads(data)
        n = len(c["d"])
        values = [v if type(v) is str else str(v) for v in c["v"]]  # numbers are stored as sent
        metas = c["m"] if isinstance(c["m"], list) else [c["m"]] * n
        cums = c["c"] if isinstance(c["c"], list) else [c["c"]] * n
        decoded.append((chunk_id, list(zip(c["d"], values, cums, metas))))
    if ordered:
        points: list[Point] = [p for _, chunk_points in decoded for p in chunk_points]
    else:
        keyed = [(p[0], chunk_id, k, p) for chunk_id, chunk_points in decoded for k, p in enumerate(chunk_points)]
        keyed.sort(key=lambda item: item[:3])
        points = [item[3] for item in keyed]
    if since_us is not None or until_us is not None:
        lo = since_us if since_us is not None else -(2**63)
        hi = until_us if until_us is not None else 2**63
        points = [p for p in points if lo <= p[0] <= hi]
    return points
