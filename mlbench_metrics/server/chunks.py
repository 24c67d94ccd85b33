"""The chunk format: a batch's points of one series, written as one binary body, read back.

:mod:`.store` keeps one row per (batch, metric name) with its points in a body that
:func:`encode_chunks` writes as (little-endian)::

    header      <BBBBI: format version (1), values kind, cumulative kind, metadata kind, count n
    dates       n int64, microseconds since the epoch, ascending
    values      n float64 (every value a float) | n int64 (every value a whole number that
                fits) | texts (every value a string) | uint32 size + a JSON list (a mix)
    cumulative  1 byte, the flag of every point | n bytes, one per point
    metadata    the UTF-8 text of every point | texts, one per point
    texts       n uint32 end offsets, then the texts' UTF-8 (as many bytes as the last end)

so reading a million points' dates and values is a copy at C speed (``array.frombytes``),
and one point's metadata is a slice: charts need the metadata of only the few hundred
points a downsample keeps. Numbers keep their type: a value sent as ``5`` reads
back as ``"5"``, one sent as ``5.0`` as ``"5.0"``, as the dashboard's text column would.

Databases written before (by mlbench-metrics up to commit a8fe294) hold each chunk as JSON
text in ``chunks.data`` instead, ``{"d": dates, "v": values, "m": metadata, "c":
cumulative}`` (``m`` and ``c`` one value or a list); :class:`TextChunk` reads those, so
such a database needs no migration and new chunks are added to it in the binary format.
Reading that text fast: it is cut at its ``"v"``, ``"m"`` and ``"c"`` keys and the parts
decoded separately, because decoding a million points' metadata costs more than a second
and charts need only the few hundred a downsample keeps. Cutting is safe: inside a JSON
string every ``"`` is escaped, so a ``,"m":`` whose quote follows the comma directly can
only be structure; the date and value lists hold numbers and strings, never objects.

No threads are started here; nothing here touches the database.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from array import array
from itertools import accumulate, islice
from operator import itemgetter, le
from typing import Any, Final, Iterable, Sequence

__all__ = [
    "BinaryChunk",
    "Chunk",
    "Columns",
    "EncodedChunk",
    "Point",
    "TextChunk",
    "decode_chunk",
    "decode_points",
    "encode_chunks",
    "encode_point",
]

# A batch in columns: names, dates (us), values, metadata, cumulative flags; each a list
# or an iterable of the batch's length (metadata and flags are often ``itertools.repeat``).
Columns = tuple[Iterable[str], Iterable[int], Iterable[Any], Iterable[str], Iterable[bool]]

# A chunk as encode_chunks writes it: (name, first date, last date, count, body).
EncodedChunk = tuple[str, int, int, int, bytes]

# A point as the dashboard-shaped reads return it: (date_us, value, cumulative, metadata).
Point = tuple[int, str, bool, str]

_VERSION: Final = 1
_HEADER: Final = struct.Struct("<BBBBI")
_SIZE: Final = struct.Struct("<I")
_TEXT_POINT: Final = struct.Struct("<BBBBIqI")  # a header, a date and one text's end offset
_FLOAT, _INT, _TEXT, _JSON = 0, 1, 2, 3  # values kinds
_KIND_OF: Final = {float: _FLOAT, int: _INT, str: _TEXT}  # the values kind when every value has this type
_ONE, _EACH = 0, 1  # cumulative and metadata kinds: one for every point, or one per point
_U32: Final = "I" if array("I").itemsize == 4 else "L"
_BIG_ENDIAN: Final = sys.byteorder == "big"
# Metadata keeps lone surrogates (JSON's "\ud800" decodes to one) through UTF-8.
_UTF8: Final = ("utf-8", "surrogatepass")
_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":")).encode  # made once: dumps(separators=) makes one a call


def _to_le(numbers: array[Any]) -> bytes:
    if _BIG_ENDIAN:
        numbers = array(numbers.typecode, numbers)
        numbers.byteswap()
    return numbers.tobytes()


def _from_le(code: str, buffer: memoryview, start: int, count: int) -> array[Any]:
    numbers = array(code)
    numbers.frombytes(buffer[start : start + count * numbers.itemsize])
    if _BIG_ENDIAN:
        numbers.byteswap()
    return numbers


# -- writing ------------------------------------------------------------------------


def encode_chunks(columns: Columns) -> list[EncodedChunk]:
    """Split a batch's columns into one chunk per name: ``(name, first, last, count, body)``.

    Points keep their arrival order within a name unless their dates are out of order,
    in which case they are sorted by date (stably, so equal dates keep arrival order).
    This is the server's hottest loop: grouping is one dict step per point, and the
    columns of each group are picked out and packed at C speed.
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
        body = _body(
            d,
            values if d is dates else pick(values),
            [one_meta] if one_meta is not None else pick(metadata),
            [one_cum] if one_cum is not None else pick(cumulative),
        )
        out.append((name, d[0], max(d[0], d[-1]), len(idx), body))
    return out


def encode_point(date_us: int, value: Any, metadata: str, cumulative: bool) -> bytes:
    """The body of a chunk of one point (a single POST's): what :func:`encode_chunks` makes of it, faster."""
    if type(value) is not str:
        return _body([date_us], [value], [metadata], [cumulative])
    # What single posts send (the dashboard's values are text), packed in one go: the
    # header, the date, a texts section of one value, the flag and the metadata.
    text = value.encode(*_UTF8)
    head = _TEXT_POINT.pack(_VERSION, _TEXT, _ONE, _ONE, 1, date_us, len(text))
    return b"".join((head, text, b"\x01" if cumulative else b"\x00", metadata.encode(*_UTF8)))


def _picker(idx: list[int]) -> Any:
    """A C-speed ``lambda seq: [seq[i] for i in idx]``."""
    if len(idx) == 1:
        return lambda seq: [seq[idx[0]]]
    getter = itemgetter(*idx)
    return lambda seq: list(getter(seq))


def _body(dates: list[int], values: list[Any], metadata: list[str], cumulative: list[bool]) -> bytes:
    """One chunk's body; ``metadata`` and ``cumulative`` may be one entry for every point."""
    n = len(dates)
    parts = [b"", _to_le(array("q", dates))]
    kinds = set(map(type, values))
    kind = _KIND_OF.get(kinds.pop(), _JSON) if len(kinds) == 1 else _JSON
    if kind == _TEXT:
        parts += _texts(values)
    elif kind != _JSON:
        try:
            parts.append(_to_le(array("d" if kind == _FLOAT else "q", values)))
        except OverflowError:  # a whole number beyond 64 bits
            kind = _JSON
    if kind == _JSON:
        text = _COMPACT_JSON(values).encode()  # ASCII: non-ASCII is escaped
        parts += [_SIZE.pack(len(text)), text]
    if len(cumulative) != n or cumulative.count(cumulative[0]) == n:
        cum_kind, flags = _ONE, bytes([bool(cumulative[0])])
    else:
        cum_kind, flags = _EACH, bytes(map(bool, cumulative))
    parts.append(flags)
    if len(metadata) != n or metadata.count(metadata[0]) == n:
        meta_kind = _ONE
        parts.append(metadata[0].encode(*_UTF8))
    else:
        meta_kind = _EACH
        parts += _texts(metadata)
    parts[0] = _HEADER.pack(_VERSION, kind, cum_kind, meta_kind, n)
    return b"".join(parts)


def _texts(texts: list[str]) -> list[bytes]:
    """A texts section: end offsets, then the UTF-8 of every text."""
    joined = "".join(texts)
    if joined.isascii():  # one byte per character: the texts' lengths are their sizes
        encoded, sizes = joined.encode("ascii"), map(len, texts)
    else:
        each = [t.encode(*_UTF8) for t in texts]
        encoded, sizes = b"".join(each), map(len, each)
    return [_to_le(array(_U32, accumulate(sizes))), encoded]


def _read_texts(body: bytes, at: int, count: int, positions: Iterable[int] | None = None) -> tuple[list[str], int]:
    """The texts of the section at ``at`` (those at ``positions``, or all), and where the section ends."""
    ends = _from_le(_U32, memoryview(body), at, count)
    start = at + 4 * count
    stop = start + (ends[-1] if count else 0)
    if positions is not None:
        return [body[start + (ends[p - 1] if p else 0) : start + ends[p]].decode(*_UTF8) for p in positions], stop
    starts, raw = [0, *ends[:-1]], body[start:stop]
    if raw.isascii():  # one byte per character: slices of one decoded text, at C speed
        text = raw.decode("ascii")
        return list(map(text.__getitem__, map(slice, starts, ends))), stop
    return [raw[s:e].decode(*_UTF8) for s, e in zip(starts, ends)], stop


# -- reading ------------------------------------------------------------------------


class Chunk:
    """One stored chunk's dates and values, decoded; its metadata and flags read on demand.

    Attributes:
        id: the chunk's id (its arrival order).
        dates: each point's date in microseconds, ascending (an int64 array).
        values: each point's value as sent: a double array when every one is a float,
            an int64 array when every one is a whole number, else a list.
    """

    __slots__ = ("dates", "id", "values")

    def __init__(self, chunk_id: int, dates: array[int], values: Sequence[Any]) -> None:
        self.id = chunk_id
        self.dates = dates
        self.values = values

    def size(self) -> int:
        """Roughly what this chunk holds in memory, in bytes (for a cache's bound)."""
        raise NotImplementedError

    def metadata(self, positions: Sequence[int]) -> list[str]:
        """The metadata texts of the points at ``positions`` in this chunk."""
        raise NotImplementedError

    def cumulative(self, positions: Sequence[int]) -> list[bool]:
        """The cumulative flags of the points at ``positions`` in this chunk."""
        raise NotImplementedError

    def points(self) -> list[Point]:
        """Every point as the dashboard-shaped reads want it: ``(date, value text, cumulative, metadata)``."""
        every = range(len(self.dates))
        values = [v if type(v) is str else str(v) for v in self.values]  # numbers read as the text sent
        return list(zip(self.dates, values, self.cumulative(every), self.metadata(every)))


class BinaryChunk(Chunk):
    """A chunk in the binary format (see the module), decoded from its body.

    Dates and values are copied out into arrays (text values into a list); metadata and
    flags stay in the body and are read point by point when asked for.

    Raises:
        ValueError: the body is not in a format this code knows.
    """

    __slots__ = ("_body", "_flags", "_meta_at", "_meta_kind")

    def __init__(self, chunk_id: int, body: bytes) -> None:
        version, kind, cum_kind, meta_kind, n = _HEADER.unpack_from(body)
        if version != _VERSION:
            raise ValueError(f"chunk {chunk_id} is in format {version}; this code reads format {_VERSION}")
        pos = _HEADER.size
        dates = _from_le("q", memoryview(body), pos, n)
        pos += 8 * n
        values: Sequence[Any]
        if kind == _TEXT:
            values, pos = _read_texts(body, pos, n)
        elif kind == _JSON:
            (size,) = _SIZE.unpack_from(body, pos)
            values = json.loads(body[pos + 4 : pos + 4 + size])
            pos += 4 + size
        else:
            values = _from_le("d" if kind == _FLOAT else "q", memoryview(body), pos, n)
            pos += 8 * n
        super().__init__(chunk_id, dates, values)
        flag_count = n if cum_kind == _EACH else 1
        self._flags = body[pos : pos + flag_count]
        self._body, self._meta_kind, self._meta_at = body, meta_kind, pos + flag_count

    def size(self) -> int:
        """Roughly what this chunk holds in memory, in bytes."""
        values = len(self.values) * (8 if isinstance(self.values, array) else 60)
        return 8 * len(self.dates) + values + len(self._body)

    def metadata(self, positions: Sequence[int]) -> list[str]:
        """The metadata texts of the points at ``positions``."""
        if self._meta_kind == _ONE:
            return [self._body[self._meta_at :].decode(*_UTF8)] * len(positions)
        n = len(self.dates)
        if len(positions) == n:  # every one (dashboard reads): decoded at once
            every, _ = _read_texts(self._body, self._meta_at, n)
            return every if positions == range(n) else [every[p] for p in positions]
        return _read_texts(self._body, self._meta_at, n, positions)[0]

    def cumulative(self, positions: Sequence[int]) -> list[bool]:
        """The cumulative flags of the points at ``positions``."""
        flags = self._flags
        if len(flags) == 1:
            return [bool(flags[0])] * len(positions)
        return [bool(flags[p]) for p in positions]


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


_HEAD: Final = re.compile(r'\{\s*"d"\s*:\s*')
_KEY_V: Final = re.compile(r',\s*"v"\s*:\s*')
_KEY_M: Final = re.compile(r',\s*"m"\s*:\s*')
_KEY_C: Final = re.compile(r',\s*"c"\s*:\s*')
# Between two elements of a list of strings: a closing quote, a comma, an opening quote.
_STRING_SEPARATOR: Final = re.compile(r'"\s*,\s*"')


def _cut_spaced(text: str) -> tuple[str, str, str, str] | None:
    """As :func:`_cut_compact`, for any spacing (single posts were stored with spaces)."""
    head = _HEAD.match(text)
    v = _KEY_V.search(text, head.end()) if head else None
    m = _KEY_M.search(text, v.end()) if v else None
    c = _KEY_C.search(text, m.end()) if m else None
    end = text.rfind("}")
    if head is None or v is None or m is None or c is None or end < c.end():
        return None
    return text[head.end() : v.start()], text[v.end() : m.start()], text[m.end() : c.start()], text[c.end() : end]


class TextChunk(Chunk):
    """A chunk in the JSON text format of databases written before the binary one (see the module)."""

    __slots__ = ("cumulative_text", "metadata_text")

    def __init__(self, chunk_id: int, text: str) -> None:
        cut = _cut_compact(text) or _cut_spaced(text)
        if cut is None:
            whole = json.loads(text)  # not the writer's layout: decode it the slow way
            dates, values = whole["d"], whole["v"]
            self.metadata_text, self.cumulative_text = json.dumps(whole["m"]), json.dumps(whole["c"])
        else:
            d_text, v_text, self.metadata_text, self.cumulative_text = cut
            dates, values = json.loads(d_text), json.loads(v_text)
        if all(type(v) is float for v in values):
            values = array("d", values)
        super().__init__(chunk_id, array("q", dates), values)

    def size(self) -> int:
        """Roughly what this chunk holds in memory, in bytes."""
        values = len(self.values) * (8 if isinstance(self.values, array) else 60)
        return len(self.dates) * 8 + values + len(self.metadata_text) + len(self.cumulative_text)

    def metadata(self, positions: Sequence[int]) -> list[str]:
        """The metadata texts of the points at ``positions``."""
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
        """The cumulative flags of the points at ``positions``."""
        flags = json.loads(self.cumulative_text)
        if isinstance(flags, list):
            return [bool(flags[p]) for p in positions]
        return [bool(flags)] * len(positions)


def decode_chunk(chunk_id: int, data: str | bytes, body: bytes | None) -> Chunk:
    """A stored chunk from its row: ``data`` is its body, JSON text (older databases) or empty: ``body``."""
    if not data and body is not None:
        return BinaryChunk(chunk_id, body)
    return BinaryChunk(chunk_id, data) if isinstance(data, bytes) else TextChunk(chunk_id, data)


def _text_points(data: str) -> list[Point]:
    """Every point of an older text chunk, decoded whole (faster than cutting when all are wanted)."""
    c = json.loads(data)
    n = len(c["d"])
    values = [v if type(v) is str else str(v) for v in c["v"]]  # numbers are stored as sent
    metas = c["m"] if isinstance(c["m"], list) else [c["m"]] * n
    cums = c["c"] if isinstance(c["c"], list) else [c["c"]] * n
    return list(zip(c["d"], values, cums, metas))


def decode_points(chunks: list[Any], since_us: int | None, until_us: int | None) -> list[Point]:
    """The points of one series' chunk rows ``(name, first, last, id, data, body)`` in (date, arrival) order.

    Chunks come ordered by first date; when none overlaps the one before, their points
    are already in order and are concatenated, otherwise all are sorted.
    """
    ordered = True
    previous_last: int | None = None
    decoded = []
    for _, first, last, chunk_id, data, body in chunks:
        if previous_last is not None and first <= previous_last:
            ordered = False
        previous_last = last if previous_last is None else max(previous_last, last)
        text = isinstance(data, str) and data != ""
        decoded.append((chunk_id, _text_points(data) if text else decode_chunk(chunk_id, data, body).points()))
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
