"""Delivering a durable log from another process: tailing, taking over from a dead agent,
gaps, and the status area. A writer (``DurableStore(shared=True)``) and a reader
(``TailLog``/``TailStore``) on real files in one process; an injected clock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlbench_metrics.agent import AgentSettings
from mlbench_metrics.delivery import DropReason, Parcel
from mlbench_metrics.errors import ConfigError
from mlbench_metrics.logger.settings import LoggerConfig
from mlbench_metrics.records import Context
from mlbench_metrics.spool import DurableStore, SpoolDir
from mlbench_metrics.spool.durable import layout
from mlbench_metrics.spool.durable.status import AgentReport, StatusArea
from mlbench_metrics.spool.durable.tail import GAP_TIMEOUT, TailLog, TailStore
from mlbench_metrics.spool.files import try_lock

CTX = Context(0, 1, None)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def writer(tmp_path: Path) -> DurableStore:
    return DurableStore(SpoolDir(tmp_path, 7, {}), 1 << 30, "w", lambda: None, shared=True)


def write(store: DurableStore, values: range) -> None:
    for v in values:
        store.write("x", float(v), 1000 + v, v, CTX)


def drain(store: TailStore, size: int = 100) -> list[Parcel]:
    items = list(store.buffer)
    store.buffer.clear()
    return store.cut(items, size, 0)


def values(store: TailStore, parcel: Parcel) -> list[float]:
    batch = store.load(parcel)
    assert batch is not None
    return [float(v) for v in batch.values]


def test_the_writer_queues_nothing_and_the_tail_finds_every_record(tmp_path: Path) -> None:
    w = writer(tmp_path)
    write(w, range(250))
    assert not w.buffer and w.end() == 250  # the slot numbers are in the log, not in memory
    tail = TailStore(TailLog(w.dir.path), "t")
    assert tail.feed(10_000, final=False, end=None) == 250
    parcels = drain(tail)
    assert [p.batch_id for p in parcels] == [
        f"{w.dir.writer}:0-100",
        f"{w.dir.writer}:100-200",
        f"{w.dir.writer}:200-250",
    ]
    assert values(tail, parcels[2]) == [float(v) for v in range(200, 250)]
    batch = tail.load(parcels[0])
    assert batch is not None and batch.metadata[3] == '{"rank": 0, "epoch": 1, "step": 3}'
    write(w, range(250, 300))  # the writer goes on: the next feed finds only the new ones
    assert tail.feed(10_000, final=False, end=None) == 50
    for parcel in parcels:
        tail.settle(parcel)
    assert tail.settled_below() == 250
    assert tail.log.shared_watermark() == 250 == w.log.shared_watermark()  # the writer sees it too


def test_an_agent_taking_over_skips_what_was_delivered_and_resends_the_rest_whole(tmp_path: Path) -> None:
    w = writer(tmp_path)
    write(w, range(1000))
    first = TailStore(TailLog(w.dir.path), "t")
    first.feed(700, final=False, end=None)
    delivered, cut_only, _, sent_dead, *rest = drain(first, 150)  # 150, 150, 150, 150, 100 slots
    first.settle(delivered)
    first.settle(sent_dead)  # a range after one still in flight: the watermark stays at 150
    # ... and the agent dies: the next one goes on from the log's marks.
    second = TailStore(TailLog(w.dir.path), "t2")
    assert second.cursor == 150
    second.feed(10_000, final=False, end=None)
    ids = [p.batch_id for p in drain(second, 400)]
    writer_name = w.dir.writer
    assert ids == [
        f"{writer_name}:150-300",  # cut_only: as it was cut, under the same id
        f"{writer_name}:300-450",
        # 450-600 was delivered: skipped
        f"{writer_name}:600-700",
        f"{writer_name}:700-1000",  # never cut: the new agent's own batch size
    ]
    assert cut_only.batch_id == f"{writer_name}:150-300" and [p.batch_id for p in rest] == [f"{writer_name}:600-700"]


def test_a_range_counted_but_not_marked_is_marked_by_the_next_agent(tmp_path: Path) -> None:
    w = writer(tmp_path)
    write(w, range(300))
    first = TailStore(TailLog(w.dir.path), "t")
    first.feed(300, final=False, end=None)
    drain(first, 100)  # cut and marked; the agent counted 100-200 and died before marking it
    second = TailStore(TailLog(w.dir.path), "t2", pending=(100, 200))
    second.feed(10_000, final=False, end=None)
    assert [p.batch_id for p in drain(second, 100)] == [f"{w.dir.writer}:0-100", f"{w.dir.writer}:200-300"]
    third = TailStore(TailLog(w.dir.path), "t3")  # the mark is in the log now
    third.feed(10_000, final=False, end=None)
    assert [p.count for p in drain(third, 100)] == [100, 100]


def test_an_unwritten_slot_is_waited_for_then_skipped(tmp_path: Path) -> None:
    w = writer(tmp_path)
    write(w, range(20))
    segment = w.dir.path / layout.segment_name(0)
    with open(segment, "r+b") as f:  # slot 5: taken, never written (a log() interrupted)
        f.seek(5 * layout.SLOT + layout.COMMIT_AT)
        f.write(bytes(8))
    clock = Clock()
    tail = TailStore(TailLog(w.dir.path), "t", clock=clock)
    assert tail.feed(100, final=False, end=None) == 5  # another thread may be filling it
    assert tail.feed(100, final=False, end=None) == 0
    clock.now += GAP_TIMEOUT
    assert tail.feed(100, final=False, end=None) == 14 and tail.skipped == 1
    assert [int(v) for p in drain(tail) for v in values(tail, p)] == [*range(5), *range(6, 20)]


def test_after_the_writer_died_the_tail_ends_at_its_last_record(tmp_path: Path) -> None:
    w = writer(tmp_path)
    write(w, range(30))
    segment = w.dir.path / layout.segment_name(0)
    with open(segment, "r+b") as f:  # the last record torn: killed in the middle of log()
        f.seek(29 * layout.SLOT + layout.COMMIT_AT)
        f.write(bytes(8))
    tail = TailStore(TailLog(w.dir.path), "t")
    assert tail.feed(100, final=False, end=None) == 29 and not tail.exhausted
    assert tail.feed(100, final=True, end=None) == 0 and tail.exhausted


def test_slots_of_a_segment_the_size_bound_deleted_are_counted_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layout, "SEGMENT_SLOTS", 1000)
    w = DurableStore(SpoolDir(tmp_path, 7, {}), 0, "w", lambda: None, shared=True)  # keeps two segments
    write(w, range(3500))
    tail = TailStore(TailLog(w.dir.path), "t")
    assert tail.feed(10_000, final=True, end=3500) == 3500
    parcels = drain(tail, 1000)
    assert [tail.lost(p) for p in parcels[:2]] == [(1000, DropReason.SPOOL_FULL), (1000, DropReason.SPOOL_FULL)]
    assert values(tail, parcels[2]) == [float(v) for v in range(2000, 3000)]


def test_the_status_area_carries_counts_flushes_and_notices(tmp_path: Path) -> None:
    trainer = StatusArea(tmp_path / "status.bin", create=True)
    agent = StatusArea(tmp_path / "status.bin")
    assert agent.trainer() == (0, None, False)
    trainer.request_flush(500)
    trainer.request_flush(400)  # a flush asks for at least what the last one did
    trainer.set_end(900, closed=True)
    assert agent.trainer() == (500, 900, True)
    report = AgentReport(7, 2, 450, 440, 3, 10, 1, {"rejected": 9}, "TransientApiError: 503", (450, 500))
    agent.publish(report)
    assert trainer.read() == report and trainer.read().dropped_total == 9
    for i in range(6):
        agent.notice(f"warning {i}")
    count, texts = trainer.notices(1)
    assert count == 6 and texts == ["warning 2", "warning 3", "warning 4", "warning 5"]
    with open(tmp_path / "status.bin", "r+b") as f:  # an agent killed in the middle of an update
        f.seek(64)
        f.write((11).to_bytes(8, "little"))
    assert trainer.read().stored == 440  # what it left, without waiting for it forever
    agent.publish(report)
    assert trainer.read() == report
    trainer.close()
    agent.close()


def test_notices_are_whole_up_to_a_warning_with_two_long_paths(tmp_path: Path) -> None:
    # Before, a notice was cut at 238 bytes: "... deliver them with: mlbench-metrics sync /ho"
    trainer = StatusArea(tmp_path / "status.bin", create=True)
    agent = StatusArea(tmp_path / "status.bin")
    where = "/home/someone/experiments/" + "x" * 150
    long = f"mlbench-metrics: 14000 records wait in {where}; deliver them with: mlbench-metrics sync {where}"
    agent.notice(long)
    agent.notice("é" * 1000)  # too long even so: cut on a character, and said
    agent.notice("after")  # a long one does not spill into its neighbour
    _, texts = trainer.notices(0)
    assert texts[0] == long and len(long.encode()) > 400
    assert texts[1].endswith("é [...]") and "\ufffd" not in texts[1] and len(texts[1].encode()) <= 698
    assert texts[2] == "after"
    trainer.close()
    agent.close()


def test_agent_settings_travel_as_one_line_and_refuse_another_protocol(tmp_path: Path) -> None:
    from mlbench_metrics import ApiClient

    config = LoggerConfig.resolve(3, environ={})
    with ApiClient(url="127.0.0.1:9", timeout=(2, 30)) as client:
        settings = AgentSettings.of(tmp_path, config, 3, client, "secret")
    line = settings.to_json()
    assert "\n" not in line and AgentSettings.from_json(line) == settings
    assert settings.url == "http://127.0.0.1:9" and settings.timeouts == (2, 30)
    with pytest.raises(ValueError, match="protocol"):
        AgentSettings.from_json(json.dumps({**json.loads(line), "version": 99}))
    with pytest.raises(ValueError):
        AgentSettings.from_json("not json")


@pytest.mark.parametrize(
    ("environ", "explicit", "expected"),
    [
        ({}, None, "thread"),
        ({"MLBENCH_METRICS_DELIVERY": "process"}, None, "process"),
        ({"MLBENCH_METRICS_DELIVERY": "process"}, "thread", "thread"),
        ({"MLBENCH_METRICS_DELIVERY": "carrier-pigeon"}, None, "thread"),
    ],
)
def test_the_delivery_mode_comes_from_the_argument_then_the_environment(
    environ: dict[str, str], explicit: str | None, expected: str
) -> None:
    assert LoggerConfig.resolve(1, delivery=explicit, environ=environ).delivery == expected


def test_process_delivery_needs_a_spool_and_a_known_mode() -> None:
    with pytest.raises(ConfigError, match="spool"):
        LoggerConfig.resolve(1, delivery="process", spool=False, environ={})
    with pytest.raises(ConfigError, match="delivery"):
        LoggerConfig.resolve(1, delivery="fast", environ={})
    # From the environment, process delivery does not apply to a logger without a spool.
    assert LoggerConfig.resolve(1, spool=False, environ={"MLBENCH_METRICS_DELIVERY": "process"}).delivery == "thread"


def test_a_directory_an_agent_works_on_is_left_alone_by_sync(tmp_path: Path) -> None:
    from mlbench_metrics.spool import sync_writer

    w = writer(tmp_path)
    write(w, range(10))
    w.close(everything_settled=False)  # the trainer is gone ...
    fd = try_lock(w.dir.path / "agent.lock", create=True)  # ... and its agent delivers
    assert fd is not None

    class Unreachable:
        def post_metrics(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("sync must not send what an agent is sending")

    try:
        assert sync_writer(w.dir.path, Unreachable()).busy  # type: ignore[arg-type]
    finally:
        os.close(fd)
