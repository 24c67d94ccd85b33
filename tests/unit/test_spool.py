"""The spool's file formats on their own: frames, durable slots, replay grouping."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

from mlbench_metrics import spool
from mlbench_metrics._dispatch import Context
from mlbench_metrics.records import MetricBatch
from mlbench_metrics.spool import (
    DurableBuffer,
    DurableLog,
    SpoolDir,
    _durable_batches,
    batch_to_payload,
    frame,
    payload_to_batch,
    read_durable,
    read_frames,
)


def test_frames_round_trip_and_report_torn_and_damaged_records() -> None:
    data = frame(b"one") + frame(b"two") + frame(b"three")
    assert [p for _, p in read_frames(data)] == [b"one", b"two", b"three"]
    assert [p for _, p in read_frames(data[:-2])] == [b"one", b"two", None]  # cut in the last record
    assert [p for _, p in read_frames(data[: -len(frame(b"three")) + 3])] == [b"one", b"two", None]  # cut in its header
    damaged = bytearray(data)
    damaged[len(frame(b"one")) + 9] ^= 0xFF  # a flipped byte in "two"
    assert [p for _, p in read_frames(bytes(damaged))] == [b"one", None, b"three"]  # reading goes on after it
    assert list(read_frames(data + bytes(64))) == list(read_frames(data))  # preallocated zeros are no record
    assert zlib.crc32(b"one") != 0


def test_batch_payload_round_trip() -> None:
    batch = MetricBatch(["a", "b"], [0.5, "x"], [1, 2], ['{"rank": 0}', ""], [False, True], batch_id="id-1")
    back = payload_to_batch(batch_to_payload(batch))
    assert (back.names, back.values, back.dates_us, back.metadata, back.cumulative, back.batch_id) == (
        ["a", "b"],
        [0.5, "x"],
        [1, 2],
        ['{"rank": 0}', ""],
        [False, True],
        "id-1",
    )


def test_durable_log_writes_and_reads_back(tmp_path: Path) -> None:
    directory = SpoolDir(tmp_path, 7, {"endpoint": "http://127.0.0.1:1/api/"})
    buffer = DurableBuffer(lambda: DurableLog(directory))
    ctx = Context(0, 1, None)
    cum = Context(0, 1, None, True)
    rows = [
        ("loss @ 0", 0.5, 1_000_000_000, 3, ctx),
        ("n @ 0", 12, 2_000_000_000, None, cum),
        ("s @ 0", "text", 3, None, ctx),
    ]
    for row in rows:
        buffer.append(row)
    assert list(buffer) == [0, 1, 2]  # memory holds slot numbers; the records are in the log
    log = buffer.log
    assert log is not None
    assert list(zip(*log.read(0, 3))) == rows
    log.mark_batch(0, 2)
    log.mark_delivered(0)
    log.close()
    records, watermark, torn = read_durable(directory.path)
    assert (watermark, torn) == (0, 0)
    assert [(r.seq, r.name, r.value, r.step) for r in records] == [
        (0, "loss @ 0", 0.5, 3),
        (1, "n @ 0", 12, None),
        (2, "s @ 0", "text", None),
    ]
    assert records[1].context["cum"] is True and records[0].context["epoch"] == 1
    groups = [[r.seq for r in group] for group in _durable_batches(records, 10)]
    assert groups == [[0, 1], [2]]  # the marked range as it was, then the rest
    directory.release(remove=True)
    assert not directory.path.exists()


def _durable_log_of(tmp_path: Path, values: int) -> tuple[SpoolDir, Path]:
    directory = SpoolDir(tmp_path, 1, {})
    buffer = DurableBuffer(lambda: DurableLog(directory))
    ctx = Context(None, 0, None)
    for i in range(values):
        buffer.append(("x", float(i), i, None, ctx))
    assert buffer.log is not None
    buffer.log.close()
    return directory, next(directory.path.glob("seg-*.bin"))


def test_a_torn_durable_slot_is_counted_and_skipped(tmp_path: Path) -> None:
    directory, segment = _durable_log_of(tmp_path, 5)
    raw = bytearray(segment.read_bytes())
    raw[4 * 48 + 40] = 0  # slot 4's commit word never made it
    segment.write_bytes(bytes(raw))
    records, _, torn = read_durable(directory.path)
    assert [r.value for r in records] == [0.0, 1.0, 2.0, 3.0] and torn == 1


def test_slots_committed_after_an_unfilled_one_are_read(tmp_path: Path) -> None:
    # A thread takes slot 2, another fills 3 and 4, and the process dies before slot 2
    # is written: 3 and 4 had returned from log(), so they must be read back.
    directory, segment = _durable_log_of(tmp_path, 5)
    raw = bytearray(segment.read_bytes())
    raw[2 * 48 : 3 * 48] = bytes(48)
    segment.write_bytes(bytes(raw))
    records, _, torn = read_durable(directory.path)
    assert [r.seq for r in records] == [0, 1, 3, 4] and torn == 0
    assert [[r.seq for r in g] for g in _durable_batches(records, 10)] == [[0, 1], [3, 4]]


def test_durable_buffer_refuses_a_step_beyond_64_bits_before_taking_a_slot(tmp_path: Path) -> None:
    directory = SpoolDir(tmp_path, 1, {})
    buffer = DurableBuffer(lambda: DurableLog(directory))
    ctx = Context(None, 0, None)
    buffer.append(("x", 1.0, 1, None, ctx))
    with pytest.raises(ValueError, match="64 bits"):
        buffer.append(("x", 2.0, 2, 2**64, ctx))
    buffer.append(("x", 3.0, 3, 5, ctx))
    assert list(buffer) == [0, 1]  # no slot was skipped
    assert buffer.log is not None
    buffer.log.close()
    records, _, _ = read_durable(directory.path)
    assert [(r.value, r.step) for r in records] == [(1.0, None), (3.0, 5)]


def test_replay_batches_respect_marks_and_size() -> None:
    class R:
        def __init__(self, seq: int, control: int = 0) -> None:
            self.seq, self.control = seq, control

    start, end = 1, 2
    records = [R(0, start), R(1), R(2, end), R(3), R(4), R(5), R(6, start | end), R(7)]
    groups = [[r.seq for r in g] for g in _durable_batches(records, 2)]  # type: ignore[arg-type]
    assert groups == [[0, 1, 2], [3, 4], [5], [6], [7]]


def test_durable_size_bound_deletes_the_oldest_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "_SEGMENT_SLOTS", 1000)  # small segments, so the bound is reached quickly
    directory = SpoolDir(tmp_path, 1, {})
    buffer = DurableBuffer(lambda: DurableLog(directory, max_bytes=0))  # keeps the two newest segments
    ctx = Context(None, 0, None)
    for i in range(3500):
        buffer.append(("x", i, i, None, ctx))
    log = buffer.log
    assert log is not None
    assert sorted(p.name for p in directory.path.glob("seg-*.bin")) == ["seg-000003.bin", "seg-000004.bin"]
    assert list(zip(*log.read(1990, 2010))) == [("x", i, i, None, ctx) for i in range(2000, 2010)]  # what is left of it
    log.close()
    records, _, _ = read_durable(directory.path)
    assert [r.value for r in records] == list(range(2000, 3500))


def test_durable_log_reads_every_kind_of_value(tmp_path: Path) -> None:
    directory = SpoolDir(tmp_path, 1, {})
    buffer = DurableBuffer(lambda: DurableLog(directory))
    ctx = Context(None, 0, 4)
    values = [0.25, -3, "text", 2**70, float("inf")]  # (log() refuses the rest)
    for v in values:
        buffer.append(("v", v, 1, 7, ctx))
    assert buffer.log is not None
    back = buffer.log.read(0, len(values))[1]
    assert back == [0.25, -3, "text", str(2**70), float("inf")]
    buffer.log.close()
