"""Reading step, epoch and rank out of metadata; the export writers; chunk decoding; downsampling."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import sqlite3
from array import array
from pathlib import Path

import pytest

from mlbench_metrics.points import EXPORT_COLUMNS, MetricPoint, parse_metadata, split_name, write_csv, write_json
from mlbench_metrics.server.chunks import BinaryChunk, TextChunk, encode_chunks, encode_point
from mlbench_metrics.server.columns import ChunkCache, merge_columns
from mlbench_metrics.server.readback import minmax_indices
from mlbench_metrics.server.store import Store


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"rank": 0, "epoch": 1, "step": 42}', (42, 1, 0)),  # what the logger writes
        ('{"epoch": 2, "lr": 0.1}', (None, 2, None)),
        ("{rank: 0, epoch:1.5}", (None, 1.5, 0)),  # upstream's training code: not JSON
        ("{'rank': 3, 'step': 7}", (7, None, 3)),  # a Python repr
        ('{"step": 2.0, "epoch": 1.0}', (2, 1, None)),  # whole floats become ints
        ('{"step": 2.5, "rank": -1}', (None, None, None)),  # a step or rank must be whole and a rank >= 0
        ('{"opt": {"step": 9}}', (None, None, None)),  # only top-level members count
        ('{"step": true, "epoch": "3"}', (None, None, None)),
        ("", (None, None, None)),
        ("free text", (None, None, None)),
        ("[1, 2]", (None, None, None)),
    ],
)
def test_parse_metadata(text: str, expected: tuple[object, object, object]) -> None:
    assert parse_metadata(text) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("loss @ 0", ("loss", 0)),
        ("val loss @ 12", ("val loss", 12)),
        ("loss", ("loss", None)),
        ("a @ b", ("a @ b", None)),
    ],
)
def test_split_name(name: str, expected: tuple[str, int | None]) -> None:
    assert split_name(name) == expected


def _point(value: object) -> MetricPoint:
    date = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone.utc)
    return MetricPoint(date, value, 7, 1, 0, False, '{"step": 7}')


def test_writers_share_the_columns_and_keep_nan_as_text() -> None:
    series = [("loss @ 0", [_point(0.5), _point(float("nan"))]), ("empty", [])]
    out = io.StringIO()
    write_csv(series, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == ",".join(EXPORT_COLUMNS)
    assert lines[1] == 'loss @ 0,2026-01-02T03:04:05.600000+00:00,7,1,0,0.5,False,"{""step"": 7}"'
    out = io.StringIO()
    write_json(series, out)
    rows = json.loads(out.getvalue())
    assert [r["value"] for r in rows] == [0.5, "nan"] and list(rows[0]) == list(EXPORT_COLUMNS)
    out = io.StringIO()
    write_json([], out)
    assert json.loads(out.getvalue()) == []


TRICKY = ["", '{"a": "x\\",\\"y"}', "ends with backslash \\", '","', "ünïcode ✓", '{"step": 1}', "a\nb", "lone \ud800"]
VALUES = {
    "mixed": [1, 2.5, "text", 'q"uote', "nan", float("nan"), -0.0, 2**70, float("inf")],
    "text": ["0.5", "", "ünïcode", "lone \ud800", 'q"uote'],
    "floats": [0.5, -0.0, float("nan"), float("-inf"), 1e300],
    "whole": [0, -(2**63), 2**63 - 1, 7],
}


def _write_text_chunks(path: Path, run: int, batches: list[list[tuple[int, object, str, bool]]]) -> None:
    """Store batches as the code before the binary format did: JSON text in ``chunks.data``."""
    conn = sqlite3.connect(path)
    with conn:
        for chunk_id, points in enumerate(batches, start=1):
            points = sorted(points, key=lambda p: p[0])  # the writer sorted a chunk's points by date
            d, v, m, c = (list(column) for column in zip(*points))
            one_m = m[0] if m.count(m[0]) == len(m) else m
            text = json.dumps({"d": d, "v": v, "m": one_m, "c": c}, separators=(",", ":"))
            if len(points) == 1:  # single posts were stored with spaces
                text = json.dumps({"d": d, "v": v, "m": m[0], "c": c[0]})
            row = (run, "s", d[0], chunk_id, d[-1], len(d), text)
            conn.execute(
                "INSERT INTO chunks (owner, name, first_date, id, last_date, count, data) VALUES (?,?,?,?,?,?,?)", row
            )
    conn.close()


@pytest.mark.parametrize("layout", ["binary", "text"])
@pytest.mark.parametrize("metadata", ["one", "ascii", "unicode"])
@pytest.mark.parametrize("values", sorted(VALUES))
def test_chunk_columns_match_what_was_sent(tmp_path: Path, values: str, metadata: str, layout: str) -> None:
    """Both chunk formats read back every point as sent, whole (dashboard reads) or as columns
    (charts, which find a point's metadata in its chunk), for tricky text and values."""
    path = tmp_path / "m.db"
    store = Store(str(path))
    run = store.create_run(0, name="r", num_workers=1)["id"]
    rng = random.Random(7)
    n = 60
    texts = {"one": TRICKY[:1], "ascii": [t for t in TRICKY if t.isascii()], "unicode": TRICKY}[metadata]
    batches = []
    for _ in range(4):  # overlapping dates across batches: the sorted path
        batches.append(
            [
                (rng.randrange(0, 1000), rng.choice(VALUES[values]), rng.choice(texts), flag)
                for flag in (rng.random() < 0.5 for _ in range(n))
            ]
        )
    batches.append([(500, "single", TRICKY[1], True)])
    if layout == "binary":
        for i, points in enumerate(batches):
            d, v, m, c = (list(column) for column in zip(*points))
            store.add_batch(run, f"b{i}", (["s"] * len(d), d, v, m, c), len(d), 0)
    else:
        store.close()
        _write_text_chunks(path, run, batches)
        store = Store(str(path))
    try:
        arrived = [p for points in batches for p in points]
        expected = [
            (d, v if isinstance(v, str) else str(v), c, m) for d, v, m, c in sorted(arrived, key=lambda p: p[0])
        ]
        assert dict(store.series(run_id=run))["s"] == expected
        (columns,) = store.series_columns(run)
        indices = list(range(len(columns)))
        metadata_got, cumulative_got = columns.details(indices)
        got = [
            (d, v if isinstance(v, str) else str(v), c, m)
            for d, v, c, m in zip(columns.dates, columns.values, cumulative_got, metadata_got)
        ]
        assert got == expected
        some = [3, 100, 7, len(columns) - 1]  # a few, in any order: the split path
        assert columns.details(some)[0] == [expected[i][3] for i in some]
        (cut,) = store.series_columns(run, since_us=200, until_us=800)
        inside = [p for p in expected if 200 <= p[0] <= 800]
        assert list(cut.dates) == [p[0] for p in inside]
        assert cut.details(list(range(len(cut))))[0] == [p[3] for p in inside]
    finally:
        store.close()


def test_merge_columns_concatenates_ordered_chunks() -> None:
    chunks = [
        TextChunk(1, '{"d":[1,2],"v":[1,2],"m":"","c":false}'),
        TextChunk(2, '{"d":[3,4],"v":[3,4],"m":["a","b"],"c":[true,false]}'),
    ]
    columns = merge_columns("x", chunks, 2, 3)
    assert list(columns.dates) == [2, 3] and columns.values == [2, 3] and columns.cursor == 2
    assert columns.details([0, 1]) == (["", "a"], [False, True])


@pytest.mark.parametrize("nans", [[], [55], [50], [50, 51, 52, 53, 54, 55, 56, 57, 58, 59], [0, 100]])
def test_minmax_keeps_bucket_extremes_ends_and_skips_nan(nans: list[int]) -> None:
    """NaN in the middle of a bucket, first in it (where min and max would return it), filling it."""
    dates = list(range(101))  # a span of 100: ten buckets of ten dates each
    values = [float((i * 7) % 10) for i in range(101)]
    for i in nans:
        values[i] = float("nan")
    for given in (values, array("d", values)):
        keep = minmax_indices(dates, given, 10)
        assert keep[0] == 0 and keep[-1] == 100 and keep == sorted(set(keep)) and len(keep) <= 22
        assert not set(keep) - {0, 100} & set(nans)
        for b in range(10):
            numbers = [v for v in values[b * 10 : b * 10 + 10] if v == v]
            kept = {values[i] for i in keep if b * 10 <= i < b * 10 + 10 and i not in nans}
            assert kept == ({min(numbers), max(numbers)} if numbers else set())


@pytest.mark.parametrize("code", ["d", "q"])
def test_minmax_finds_the_same_points_in_arrays_as_in_lists(code: str) -> None:
    """Arrays find a value's position by its bytes: not at a match across two items (small
    whole numbers are mostly zero bytes), and not at an equal value with other bytes (-0.0)."""
    rng = random.Random(3)
    choices = [0.0, -0.0, 1.0, 256.0, 5e-324] if code == "d" else [0, 1, 256, 65536, -1]
    for _ in range(50):
        values = [rng.choice(choices) for _ in range(rng.randrange(30, 300))]
        dates = sorted(rng.randrange(0, 1000) for _ in values)
        expected = minmax_indices(dates, values, 7)
        assert minmax_indices(dates, array(code, values), 7) == expected


def test_minmax_cuts_by_position_when_dates_are_equal_and_refuses_text() -> None:
    assert minmax_indices([5] * 50, list(range(50)), 5) == sorted(minmax_indices([5] * 50, list(range(50)), 5))
    assert minmax_indices([1, 2], [1.0, 2.0], 10) == [0, 1]
    for text in (["a"] * 100, [1.0] * 99 + ["a"], [True] * 100):
        with pytest.raises(TypeError):
            minmax_indices(list(range(100)), text, 5)


def test_the_chunk_cache_keeps_decoded_chunks_within_its_bound() -> None:
    ((*_, body),) = encode_chunks((["x"] * 3, [1, 2, 3], [0.5, 0.25, 0.125], [""] * 3, [False] * 3))
    cache = ChunkCache(max_bytes=BinaryChunk(0, body).size() * 2)
    one = cache.decode(7, 1, body, None)
    cache.decode(7, 2, "", body)
    assert sorted(cache.lookup(7, [1, 2])) == [1, 2] and cache.lookup(8, [1, 2]) == {}  # ids are per owner
    cache.lookup(7, [1])  # 1 is now the most recently used
    cache.decode(8, 1, "", body)  # past the bound: 2, the least recently used, goes
    assert sorted(cache.lookup(7, [1, 2, 3])) == [1] and sorted(cache.lookup(8, [1])) == [1]
    assert list(one.dates) == [1, 2, 3] and list(one.values) == [0.5, 0.25, 0.125]


@pytest.mark.parametrize("value", ["0.5", "", "ünïcode", "lone \ud800", 0.5, 7, 2**70, True])
@pytest.mark.parametrize(("metadata", "cumulative"), [("", False), ('{"rank": 0, "step": 3}', True), ("✓", False)])
def test_a_single_point_encodes_as_in_a_batch(value: object, metadata: str, cumulative: bool) -> None:
    ((*_, body),) = encode_chunks((["x"], [1_764_000_000_000_000], [value], [metadata], [cumulative]))
    assert encode_point(1_764_000_000_000_000, value, metadata, cumulative) == body
    (point,) = BinaryChunk(1, body).points()
    assert point == (1_764_000_000_000_000, value if isinstance(value, str) else str(value), cumulative, metadata)
