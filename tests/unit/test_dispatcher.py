"""The dispatcher through its public API, on a fake clock, delivering to a sink in memory:
retry order, backoff, flush markers, trims, partial answers, the close deadline, and
the accounting invariant."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

import pytest

from mlbench_metrics import TransientApiError
from mlbench_metrics.client.result import BatchFuture, BatchResult
from mlbench_metrics.delivery import BACKOFF_FIRST, BACKOFF_MAX, Dispatcher, MemoryStore, Parcel
from mlbench_metrics.delivery.dispatcher import DISK_GRACE
from mlbench_metrics.errors import ClientApiError
from mlbench_metrics.logger.settings import LoggerConfig
from mlbench_metrics.records import Context, MetricBatch
from mlbench_metrics.spool.batches import SpoolStore
from mlbench_metrics.spool.files import SpoolDir
from mlbench_metrics.spool.sync import records_waiting

CTX = Context(None, 0, None)


class FakeClock:
    """Monotonic seconds that move only when the dispatcher waits with nothing to do.

    A wait first gives the event a few real milliseconds (answers and wake-ups arrive on
    other threads), then jumps the clock by the time asked for, as trio's autojump does.
    """

    def __init__(self) -> None:
        self.now = 100.0
        self.grace = 0.002  # real seconds a wait gives other threads before time jumps
        self.movers: set[str] | None = None  # names of the threads whose waits move time (None: all)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def wait(self, event: threading.Event, seconds: float) -> bool:
        target = self.now + min(max(seconds, 1e-6), 3600.0)  # a float that big may not move by less
        mover = self.movers is None or threading.current_thread().name in self.movers
        if not mover and event.wait(60.0):  # in real time, while the movers move the clock
            return True
        if event.wait(self.grace):
            return True
        with self._lock:  # to the waiter's own deadline: two waiters never add up their waits
            self.now = max(self.now, target)
        return False


Answer = Callable[[MetricBatch, int], Optional[BatchResult]]  # Optional: this alias is evaluated (Python 3.9)
"""What the sink answers to a batch on its n-th send (None: no answer, ever)."""


class Sink:
    """Delivers into memory, answering as a test's script says; records every send."""

    def __init__(self, clock: FakeClock, answer: Answer | None = None) -> None:
        self.clock = clock
        self.answer = answer or (lambda batch, n: BatchResult(len(batch), len(batch)))
        self.sends: list[tuple[float, str, int]] = []  # (time, batch id, size)
        self.stored: list[Any] = []
        self._attempts: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, batch: MetricBatch) -> BatchFuture:
        with self.lock:
            key = str(batch.batch_id)
            n = self._attempts[key] = self._attempts.get(key, 0) + 1
            self.sends.append((self.clock(), key, len(batch)))
        future = BatchFuture(len(batch), batch.batch_id)
        result = self.answer(batch, n)
        if result is not None:
            failed = set(result.failed)
            with self.lock:
                self.stored += [v for i, v in enumerate(batch.values) if i not in failed]
            future.set_result(result)
        return future

    def times(self, batch_id: str) -> list[float]:
        return [round(t - 100.0, 6) for t, key, _ in self.sends if key == batch_id]


def transient(n: int, why: str = "503") -> dict[int, Any]:
    return dict.fromkeys(range(n), TransientApiError(why))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make(clock: FakeClock) -> Iterator[Callable[..., tuple[Dispatcher, MemoryStore, Sink]]]:
    made: list[Dispatcher] = []

    def make(answer: Answer | None = None, **options: Any) -> tuple[Dispatcher, MemoryStore, Sink]:
        store = MemoryStore("w")
        sink = Sink(clock, answer)
        settings = {"batch_size": 10, "flush_interval": 1.0, "max_buffer": 1000, "max_in_flight": 1, **options}
        dispatcher = Dispatcher(sink, store, LoggerConfig(1, None, **settings), clock=clock, wait=clock.wait)
        made.append(dispatcher)
        return dispatcher, store, sink

    yield make
    for dispatcher in made:  # every dispatcher is closed, whatever the test did
        dispatcher.close(1.0)


def log(store: MemoryStore, values: range) -> None:
    for v in values:
        store.buffer.append(("x", v, v, None, CTX))


def balanced(dispatcher: Dispatcher) -> bool:
    s = dispatcher.stats()
    return s.logged == s.stored + s.spooled + s.dropped_total


def test_everything_is_stored_in_batches_oldest_first(make: Any) -> None:
    dispatcher, store, sink = make(max_in_flight=4)
    dispatcher.start()
    log(store, range(95))
    assert dispatcher.flush(10)
    assert sink.stored == list(range(95))
    assert [size for _, _, size in sink.sends] == [10] * 9 + [5]
    stats = dispatcher.stats()
    assert (stats.logged, stats.stored, stats.pending, stats.dropped) == (95, 95, 0, {})


def test_a_failing_batch_is_sent_again_with_doubling_backoff_ahead_of_newer_ones(make: Any) -> None:
    def answer(batch: MetricBatch, n: int) -> BatchResult:
        if batch.batch_id == "w-0" and n <= 3:
            return BatchResult(len(batch), 0, failed=transient(len(batch)))
        return BatchResult(len(batch), len(batch))

    dispatcher, store, sink = make(answer)
    log(store, range(20))
    dispatcher.start()
    assert dispatcher.flush(10)
    first = sink.times("w-0")
    gaps = [round(b - a, 6) for a, b in zip(first, first[1:])]
    assert gaps == [BACKOFF_FIRST, 2 * BACKOFF_FIRST, 4 * BACKOFF_FIRST]
    assert [key for _, key, _ in sink.sends] == ["w-0"] * 4 + ["w-1"]  # the newer batch waited
    stats = dispatcher.stats()
    assert (stats.stored, stats.retried) == (20, 30)


def test_backoff_is_capped_and_a_batch_may_fail_for_ever(make: Any, clock: FakeClock) -> None:
    # Was: after 1,024 attempts 2 ** attempts overflowed a float and dropped the batch.
    def answer(batch: MetricBatch, n: int) -> BatchResult:
        return BatchResult(len(batch), 0, failed=transient(len(batch))) if n <= 1100 else BatchResult(10, 10)

    dispatcher, store, sink = make(answer)
    clock.grace = 0.0  # nothing but the thread itself moves here: let time fly
    log(store, range(10))
    dispatcher.start()
    assert dispatcher.flush(60)
    times = sink.times("w-0")
    assert len(times) == 1101 and max(b - a for a, b in zip(times, times[1:])) == pytest.approx(BACKOFF_MAX)
    assert dispatcher.stats().stored == 10 and dispatcher.stats().last_error is not None


def test_a_refused_batch_is_dropped_and_the_flush_says_so(make: Any) -> None:
    def answer(batch: MetricBatch, n: int) -> BatchResult:
        if 5 in batch.values:
            return BatchResult(len(batch), 0, failed=dict.fromkeys(range(len(batch)), ClientApiError("404")))
        return BatchResult(len(batch), len(batch))

    dispatcher, store, _ = make(answer)
    dispatcher.start()
    log(store, range(20))
    assert not dispatcher.flush(10)  # records logged before it were refused
    log(store, range(20, 30))
    assert dispatcher.flush(10)  # a later flush covers only what came after the first
    stats = dispatcher.stats()
    assert stats.dropped == {"rejected": 10} and stats.stored == 20 and balanced(dispatcher)


def test_a_partial_answer_sends_only_the_rest_under_a_new_id(make: Any) -> None:
    # A fan-out of single posts: some are answered 201, some fail; only those are sent again.
    def answer(batch: MetricBatch, n: int) -> BatchResult:
        if n == 1 and batch.batch_id == "w-0":
            return BatchResult(
                10, 7, failed={1: TransientApiError("x"), 4: TransientApiError("x"), 8: ClientApiError("no")}
            )
        return BatchResult(len(batch), len(batch))

    dispatcher, store, sink = make(answer)
    log(store, range(10))
    dispatcher.start()
    assert not dispatcher.flush(10)  # one was refused
    assert sorted(sink.stored) == [0, 1, 2, 3, 4, 5, 6, 7, 9]  # each once
    assert [(key, size) for _, key, size in sink.sends] == [("w-0", 10), ("w-0~1", 2)]
    stats = dispatcher.stats()
    assert (stats.stored, stats.dropped, stats.retried) == (9, {"rejected": 1}, 2)


def test_past_max_buffer_without_a_disk_the_oldest_are_dropped_and_a_flush_says_so(make: Any) -> None:
    dispatcher, store, sink = make(max_buffer=100)
    log(store, range(300))
    dispatcher.trim()  # what the logger does once the buffer holds max_buffer
    dispatcher.start()
    assert not dispatcher.flush(10)
    stats = dispatcher.stats()
    assert stats.dropped["overflow"] > 0 and stats.stored == 300 - stats.dropped["overflow"]
    assert sink.stored == list(range(300 - len(sink.stored), 300))  # the newest were kept


def test_a_flush_marker_inside_a_trimmed_chunk_still_waits_for_its_records(make: Any) -> None:
    dispatcher, store, _ = make(max_buffer=100)
    dispatcher.start()
    result: list[bool] = []
    log(store, range(50))
    flusher = threading.Thread(target=lambda: result.append(dispatcher.flush(10)))
    flusher.start()
    log(store, range(50, 250))
    dispatcher.trim()
    flusher.join(20)
    assert result and isinstance(result[0], bool)
    assert dispatcher.flush(10) or dispatcher.stats().dropped
    assert balanced(dispatcher)


def test_close_leaves_at_its_deadline_when_nothing_answers(make: Any, clock: FakeClock) -> None:
    dispatcher, store, _ = make(answer=lambda batch, n: None, max_in_flight=2)
    dispatcher.start()
    log(store, range(100))
    started = clock()
    dispatcher.close(5.0)
    assert clock() - started <= 5.0 + DISK_GRACE + 1e-6  # the thread's last local work may take the grace
    stats = dispatcher.stats()
    assert stats.dropped == {"shutdown": 100} and stats.pending == 0 and stats.in_flight == 0
    assert balanced(dispatcher)


def test_while_closing_the_backoff_still_applies(make: Any, clock: FakeClock) -> None:
    # Was: during close() a failing server got a request in every loop of the thread.
    dispatcher, store, sink = make(answer=lambda batch, n: BatchResult(len(batch), 0, failed=transient(len(batch))))
    dispatcher.start()
    log(store, range(10))
    dispatcher.close(3.0)
    assert len(sink.sends) <= 6  # 0.1 + 0.2 + 0.4 + 0.8 + 1.6 > 2.25 s of sending time
    assert dispatcher.stats().dropped == {"shutdown": 10}


def test_close_ends_once_the_backoff_outlasts_its_sending_time(make: Any, clock: FakeClock) -> None:
    # Was: a failing server held close() until its last moment to send, although the
    # backoff of the oldest batch already ran past it and nothing more could be sent.
    dispatcher, store, sink = make(answer=lambda batch, n: BatchResult(len(batch), 0, failed=transient(len(batch))))
    clock.movers = set()  # until close(): an idle thread would move the clock a second every 2 ms
    dispatcher.start()
    log(store, range(10))
    started = clock()
    clock.movers = {"mlbench-dispatcher"}  # close() waits in real time; only the thread moves the clock
    dispatcher.close(20.0)  # 15 s of sending time: sends at 0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3 s, next at 12.7
    assert sink.times("w-0") == [0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 12.7]
    assert clock() - started < 15.0  # the next send would be at 25.5 s: no waiting for it
    assert dispatcher.stats().dropped == {"shutdown": 10}


@pytest.mark.parametrize("answer", ["stored", "refused", "transient", "none", "partial"])
def test_after_close_every_record_is_accounted_for(make: Any, answer: str) -> None:
    def script(batch: MetricBatch, n: int) -> BatchResult | None:
        size = len(batch)
        return {
            "stored": BatchResult(size, size),
            "refused": BatchResult(size, 0, failed=dict.fromkeys(range(size), ClientApiError("no"))),
            "transient": BatchResult(size, 0, failed=transient(size)),
            "none": None,
            "partial": BatchResult(size, size // 2, failed=transient(size - size // 2)),
        }[answer]

    dispatcher, store, _ = make(answer=script, max_in_flight=2, max_buffer=50)
    dispatcher.start()
    log(store, range(500))
    dispatcher.trim()
    dispatcher.close(2.0)
    stats = dispatcher.stats()
    assert stats.logged == 500 and balanced(dispatcher) and stats.pending == stats.spooled == 0


def test_warnings_about_refused_records_repeat_after_a_quiet_minute_with_the_count_since(
    make: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    refused = ClientApiError("400 Bad Request")
    dispatcher, store, _ = make(
        answer=lambda batch, n: BatchResult(len(batch), 0, failed=dict.fromkeys(range(len(batch)), refused))
    )
    clock.movers = set()  # time moves only when this test moves it
    dispatcher.start()

    def refuse_ten() -> list[str]:
        caplog.clear()
        log(store, range(10))
        assert not dispatcher.flush(10)
        return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="mlbench_metrics"):
        assert refuse_ten() == ["mlbench-metrics: the server refused 10 records: 400 Bad Request"]
        clock.now += 30
        assert refuse_ten() == []  # within the quiet interval: counted, not said
        clock.now += 31
        assert refuse_ten() == [
            "mlbench-metrics: the server refused 20 more records since the last warning: 400 Bad Request"
        ]
        assert refuse_ten() == []
    assert dispatcher.stats().dropped == {"rejected": 40}


class GatedSpool(SpoolStore):
    """A real spool whose writes wait for the test's gate (a slow or hung disk)."""

    def __init__(self, root: Path) -> None:
        super().__init__(SpoolDir(root, 1, {}), 1 << 30, "w")
        self.gate = threading.Event()
        self.writing = threading.Event()  # a write waits at the gate
        self.closed = threading.Event()  # the thread's last step

    def spill(self, parcels: Sequence[Parcel]) -> int:
        self.writing.set()
        assert self.gate.wait(60)
        return super().spill(parcels)

    def close(self, everything_settled: bool) -> None:
        super().close(everything_settled)
        self.closed.set()

    def on_disk(self) -> int:
        return records_waiting(self.dir.path) if self.dir.created else 0


def closing_on_a_slow_disk(
    clock: FakeClock, tmp_path: Path, release: Callable[[GatedSpool], None]
) -> tuple[Dispatcher, GatedSpool]:
    """100 records for a server that fails every batch; close(0.3) while the thread
    writes the first failed batch to disk; ``release`` runs once close's deadline passed."""
    store = GatedSpool(tmp_path)
    sink = Sink(clock, lambda batch, n: BatchResult(len(batch), 0, failed=transient(len(batch))))
    closing: list[bool] = []

    def wait(event: threading.Event, seconds: float) -> bool:
        if threading.current_thread().name == "mlbench-dispatcher":
            return clock.wait(event, seconds)
        if not closing:  # close() up to its deadline: it passes while the thread writes
            closing.append(True)
            assert store.writing.wait(60)
            clock.now += seconds
            return event.is_set()
        release(store)  # close() past its deadline
        return event.wait(seconds)

    settings = LoggerConfig(1, None, batch_size=10, flush_interval=1.0, max_buffer=1000, max_in_flight=1)
    dispatcher = Dispatcher(sink, store, settings, clock=clock, wait=wait)
    log(store, range(100))
    dispatcher.start()
    dispatcher.close(0.3)
    return dispatcher, store


def test_close_waits_for_the_disk_and_what_it_counts_spooled_is_on_disk(clock: FakeClock, tmp_path: Path) -> None:
    # Was: the deadline passed while the thread put what was left on disk: close()
    # counted it dropped at shutdown and returned, and the thread wrote it afterwards (a
    # process exiting then lost some of it; the counts were wrong either way).
    dispatcher, store = closing_on_a_slow_disk(clock, tmp_path, lambda store: store.gate.set())
    stats = dispatcher.stats()
    assert store.closed.is_set()  # the thread finished before close() returned
    assert stats.dropped == {} and stats.spooled == 100 == store.on_disk()
    assert balanced(dispatcher)


def test_a_disk_that_hangs_past_the_grace_never_counts_as_spooled(clock: FakeClock, tmp_path: Path) -> None:
    dispatcher, store = closing_on_a_slow_disk(clock, tmp_path, lambda store: None)
    stats = dispatcher.stats()
    on_disk_at_close = store.on_disk()
    assert stats.spooled == on_disk_at_close == 0 and stats.dropped == {"shutdown": 100}
    assert balanced(dispatcher)
    store.gate.set()  # the disk comes back: the write under way lands, nothing after it
    assert store.closed.wait(60)
    assert store.on_disk() <= 10 and dispatcher.stats() == stats
