"""The spool's file formats through their owners: frames, the batch spool, durable slots,
replay grouping, and the durable store's slot bookkeeping."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mlbench_metrics.records import Context, MetricBatch
from mlbench_metrics.spool import BatchSpool, DurableStore, SpoolDir, read_durable, read_spool_file
from mlbench_metrics.spool.durable import CTL_END, CTL_START, DurableRecord, layout, replay_batches
from mlbench_metrics.spool.files import frame, read_frames

CTX = Context(None, 0, None)


def payloads(data: bytes) -> list[tuple[bytes | None, int, str | None]]:
    return [(f.payload, f.count, f.problem) for f in read_frames(data)]


def test_frames_round_trip_and_report_what_they_lost() -> None:
    data = frame(b"one", 1) + frame(b"two", 20) + frame(b"three", 300)
    assert payloads(data) == [(b"one", 1, None), (b"two", 20, None), (b"three", 300, None)]
    assert payloads(data[:-2])[-1] == (None, 300, "torn")  # cut in the last record: its count is known
    assert payloads(data + bytes(64)) == payloads(data)  # preallocated zeros are no record
    damaged = bytearray(data)
    damaged[len(frame(b"one", 1)) + 17] ^= 0xFF  # a flipped byte in the payload "two"
    assert payloads(bytes(damaged)) == [(b"one", 1, None), (None, 20, "damaged"), (b"three", 300, None)]
    header = bytearray(data)
    header[len(frame(b"one", 1)) + 5] ^= 0xFF  # a flipped byte in the header of "two"
    assert payloads(bytes(header)) == [(b"one", 1, None), (None, 0, "damaged"), (b"three", 300, None)]


def test_the_batch_spool_writes_reads_acknowledges_and_reports(tmp_path: Path) -> None:
    spool = BatchSpool(SpoolDir(tmp_path, 7, {}), 1 << 20)
    first = MetricBatch(["a", "b"], [0.5, "x"], [1, 2], ['{"rank": 0}', ""], [False, True], batch_id="id-1")
    second = MetricBatch(["c"], [3], [4], [""], [False], batch_id="id-2")
    entries = spool.put([first, second])
    back = spool.load(entries[0])
    assert back is not None
    assert (back.names, back.values, back.dates_us, back.metadata, back.cumulative, back.batch_id) == (
        ["a", "b"],
        [0.5, "x"],
        [1, 2],
        ['{"rank": 0}', ""],
        [False, True],
        "id-1",
    )
    spool.ack(entries[0])
    contents = read_spool_file(entries[1].file)
    assert [b.batch_id for b in contents.batches] == ["id-2"] and not contents.problems
    assert not spool.close()  # id-2 still waits


def durable_store(tmp_path: Path, max_bytes: int = 1 << 30) -> DurableStore:
    frozen: list[bool] = []
    return DurableStore(SpoolDir(tmp_path, 7, {}), max_bytes, "w", lambda: frozen.append(True))


def test_durable_records_are_written_then_read_back_by_slot(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    cum = Context(0, 1, None, True)
    rows = [
        ("loss @ 0", 0.5, 1_000_000_000, 3, CTX),
        ("n @ 0", 12, 2_000_000_000, None, cum),
        ("s", "text", 3, None, CTX),
    ]
    for row in rows:
        store.append(row)  # type: ignore[arg-type]
    assert list(store.buffer) == [0, 1, 2]  # memory holds slot numbers; the records are on disk
    parcels = store.cut(list(store.buffer), 2, 0)
    assert [(p.batch_id.rsplit(":", 1)[1], p.count, p.on_disk) for p in parcels] == [("0-2", 2, True), ("2-3", 1, True)]
    batch = store.load(parcels[0])
    assert batch is not None and batch.names == ["loss @ 0", "n @ 0"] and batch.values == [0.5, 12]
    store.settle(parcels[0])
    store.close(everything_settled=False)
    report = read_durable(store.dir.path)
    assert (report.watermark, report.torn, report.problems) == (2, 0, [])  # slots 0-1 delivered
    assert [(r.seq, r.name, r.value, r.step) for r in report.records] == [(2, "s", "text", None)]


def test_records_queued_out_of_turn_go_in_batches_of_consecutive_slots(tmp_path: Path) -> None:
    # Threads may queue slot numbers in another order than they took them.
    store = durable_store(tmp_path)
    for i in range(6):
        store.write("x", float(i), i, None, CTX)
    first = store.cut([0, 1, 3, 4], 100, 0)
    later = store.cut([2, 5], 100, len(first))
    assert [p.batch_id.rsplit(":", 1)[1] for p in first + later] == ["0-2", "3-5", "2-3", "5-6"]
    for parcel in first + later:
        store.settle(parcel)
    assert store.log.watermark == 6  # every slot delivered, in whatever order
    store.close(everything_settled=True)
    assert not store.dir.path.exists()


def _segment_of(tmp_path: Path, values: int) -> tuple[Path, Path]:
    store = durable_store(tmp_path)
    for i in range(values):
        store.write("x", float(i), i, None, CTX)
    store.log.close()
    return store.dir.path, next(store.dir.path.glob("seg-*.bin"))


def test_a_torn_durable_slot_is_counted_and_skipped(tmp_path: Path) -> None:
    path, segment = _segment_of(tmp_path, 5)
    raw = bytearray(segment.read_bytes())
    raw[4 * 48 + 40] = 0  # slot 4's commit word never made it
    segment.write_bytes(bytes(raw))
    report = read_durable(path)
    assert [r.value for r in report.records] == [0.0, 1.0, 2.0, 3.0] and report.torn == 1


def test_slots_committed_after_an_unfilled_one_are_read(tmp_path: Path) -> None:
    # A thread takes slot 2, another fills 3 and 4, and the process dies before slot 2
    # is written: 3 and 4 had returned from log(), so they must be read back.
    path, segment = _segment_of(tmp_path, 5)
    raw = bytearray(segment.read_bytes())
    raw[2 * 48 : 3 * 48] = bytes(48)
    segment.write_bytes(bytes(raw))
    report = read_durable(path)
    assert [r.seq for r in report.records] == [0, 1, 3, 4] and report.torn == 0
    assert [[r.seq for r in g] for g in replay_batches(report.records, 10)] == [[0, 1], [3, 4]]


def test_a_step_beyond_64_bits_is_refused_before_a_slot_is_taken(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    store.write("x", 1.0, 1, None, CTX)
    with pytest.raises(ValueError, match="64 bits"):
        store.write("x", 2.0, 2, 2**64, CTX)
    store.write("x", 3.0, 3, 5, CTX)
    assert list(store.buffer) == [0, 1]  # no slot was skipped
    store.log.close()
    assert [(r.value, r.step) for r in read_durable(store.dir.path).records] == [(1.0, None), (3.0, 5)]


def test_replay_batches_respect_marks_and_size() -> None:
    def r(seq: int, control: int = 0) -> DurableRecord:
        return DurableRecord(seq, "x", 0.0, 0, None, {}, control)

    records = [r(0, CTL_START), r(1), r(2, CTL_END), r(3), r(4), r(5), r(6, CTL_START | CTL_END), r(7)]
    assert [[x.seq for x in g] for g in replay_batches(records, 2)] == [[0, 1, 2], [3, 4], [5], [6], [7]]


def test_the_durable_size_bound_deletes_the_oldest_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "SEGMENT_SLOTS", 1000)  # small segments reach the bound quickly
    store = durable_store(tmp_path, max_bytes=0)  # keeps the two newest segments
    for i in range(3500):
        store.write("x", i, i, None, CTX)
    assert sorted(p.name for p in store.dir.path.glob("seg-*.bin")) == ["seg-000000002000.bin", "seg-000000003000.bin"]
    assert store.log.missing(1990, 2010) == 10
    values = store.log.read(1990, 2010)[1]
    assert values == list(range(2000, 2010))  # what is left of the range
    store.log.close()
    assert [r.value for r in read_durable(store.dir.path).records] == list(range(2000, 3500))


def test_the_durable_size_bound_is_said_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A burst the server cannot keep up with deletes segment after segment: one warning
    # says so (stats.dropped counts them), not a line on stderr per segment.
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    monkeypatch.setattr(layout, "SEGMENT_SLOTS", 1000)
    store = durable_store(tmp_path, max_bytes=0)
    for i in range(6500):
        store.write("x", i, i, None, CTX)
    assert len(list(store.dir.path.glob("seg-*.bin"))) == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "size bound" in warnings[0], warnings
    store.log.close()


def test_the_durable_log_reads_every_kind_of_value(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    ctx = Context(None, 0, 4)
    values = [0.25, -3, "text", 2**70, float("inf")]  # (log() refuses the rest)
    for v in values:
        store.write("v", v, 1, 7, ctx)
    assert store.log.read(0, len(values))[1] == [0.25, -3, "text", str(2**70), float("inf")]
    store.log.close()


def test_stored_slots_of_a_partly_answered_batch_are_never_replayed(tmp_path: Path) -> None:
    store = durable_store(tmp_path)
    for i in range(10):
        store.write("x", float(i), i, None, CTX)
    (parcel,) = store.cut(list(store.buffer), 100, 0)
    batch = store.load(parcel)
    assert batch is not None
    store.remainder(parcel, [2, 7])  # the other eight were answered 201
    store.close(everything_settled=False)
    assert [r.value for r in read_durable(store.dir.path).records] == [2.0, 7.0]


@pytest.mark.parametrize("text", ["²", "١٢", "3²", "-4", "1_000", "12 records", "9" * 40])
def test_a_damaged_fold_marker_is_reported_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str
) -> None:
    """Before: ``"²".isdigit()`` is True and ``int("²")`` raised ValueError out of ``sync``."""
    from mlbench_metrics.spool.raw import folded_count

    (tmp_path / "raw.folded").write_text(text + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics"):
        assert folded_count(tmp_path) is None
    assert "raw.folded is damaged" in caplog.text
    (tmp_path / "raw.folded").write_text("1234\n")
    assert folded_count(tmp_path) == 1234
    (tmp_path / "raw.folded").write_text("")  # its writer died before close: not damage
    caplog.clear()
    assert folded_count(tmp_path) is None and "damaged" not in caplog.text
