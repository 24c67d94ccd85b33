"""The aggregator through its public API, against a server in memory that the test answers:
raw while the server keeps up, folded when it falls behind, one send at a time (later
batches merge), a raw send cut short, per-record results, close, and the accounting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlbench_metrics import TransientApiError
from mlbench_metrics.client.result import BatchFuture, BatchResult
from mlbench_metrics.delivery import Aggregator, FoldPolicy, MemoryStore, start_dispatcher
from mlbench_metrics.errors import ApiError
from mlbench_metrics.logger.settings import LoggerConfig
from mlbench_metrics.records import Context, MetricBatch, encode

CTX = Context(0, 0, None)
T0 = 1000.0  # wall-clock seconds of the first record


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Send:
    """One call of the fake client's ``post_metrics``, answered when the test says."""

    def __init__(self, batch: MetricBatch) -> None:
        self.batch = batch
        self.future = BatchFuture(len(batch))
        self.answers: dict[int, ApiError | None] = {}
        self.abandoned = False
        self.future.track(self.partial, self.abandon)

    def partial(self) -> BatchResult:
        waiting = TransientApiError("no answer yet")
        failed = {i: self.answers.get(i, waiting) for i in range(len(self.batch)) if self.answers.get(i, waiting)}
        return BatchResult(len(self.batch), len(self.batch) - len(failed), failed=failed)

    def abandon(self) -> None:
        self.abandoned = True

    def store(self, indices: range | list[int] | None = None) -> None:
        for i in range(len(self.batch)) if indices is None else indices:
            self.answers[i] = None

    def finish(self, error: ApiError | None = None) -> None:
        """Answer every metric not answered yet with ``error`` (None: stored)."""
        for i in range(len(self.batch)):
            self.answers.setdefault(i, error)
        self.future.set_result(self.partial())

    def metadata(self) -> list[dict[str, Any]]:
        return [json.loads(m) for m in self.batch.metadata_texts()]


class Server:
    """``post_metrics`` of a server without the batch endpoint (or with it: ``supported``)."""

    def __init__(self, supported: bool | None = False, auto: bool = False) -> None:
        self.supported = supported
        self.auto = auto
        self.sends: list[Send] = []

    def __call__(self, batch: MetricBatch) -> BatchFuture:
        send = Send(batch)
        self.sends.append(send)
        if self.auto:
            send.finish()
        return send.future


def batch(batch_id: str, n: int, start: float = T0, names: tuple[str, ...] = ("loss @ 0", "acc @ 0")) -> MetricBatch:
    """``n`` records, alternating over ``names``, 10 ms apart from ``start`` (seconds)."""
    records = [(names[i % len(names)], float(i), round((start + i / 100) * 1e9), i, CTX) for i in range(n)]
    return encode(records, batch_id)


def aggregator(
    server: Server,
    *,
    pace: float | None,
    kept: bool = True,
    mode: str | float = "auto",
    copied: list[str] | None = None,
) -> Aggregator:
    wall = Clock(T0 + 1.0)
    policy = FoldPolicy(mode, clock=wall)
    if pace is not None:
        policy.observe(posts=round(pace * 10), seconds=10.0)

    def keep(b: MetricBatch) -> bool:
        if copied is not None:
            copied.append(str(b.batch_id))
        return kept

    return Aggregator(server, policy, batch_supported=lambda: server.supported, keep=keep, clock=Clock(50.0))


def test_a_server_with_the_batch_endpoint_gets_batches_as_they_are() -> None:
    server = Server(supported=True)
    agg = aggregator(server, pace=1.0)
    b = batch("b-1", 100)
    future = agg(b)
    assert future is server.sends[0].future and server.sends[0].batch is b


def test_records_go_raw_while_the_server_keeps_up() -> None:
    server = Server()
    agg = aggregator(server, pace=1000.0)
    b = batch("b-1", 100)
    future = agg(b)
    [send] = server.sends
    assert send.batch is b  # whole: the same batch, with its id
    send.finish()
    result = future.result(timeout=5)
    assert (result.stored, result.kept, result.stand_ins, result.ok) == (100, (), 0, True)


def test_records_are_folded_per_series_when_the_server_falls_behind() -> None:
    server = Server()
    agg = aggregator(server, pace=10.0)  # 100 records would take 10 s
    future = agg(batch("b-1", 100))
    [send] = server.sends
    assert send.batch.names == ["loss @ 0", "acc @ 0"]
    assert [m["count"] for m in send.metadata()] == [50, 50]
    assert [m["aggregate"] for m in send.metadata()] == ["mean", "mean"]
    assert send.batch.values == [49.0, 50.0]  # means of 0, 2, ..., 98 and 1, 3, ..., 99
    send.finish()
    result = future.result(timeout=5)
    assert (result.stored, result.kept, result.stand_ins, result.ok) == (0, tuple(range(100)), 2, True)
    assert agg.folded == 100


def test_one_send_at_a_time_and_batches_waiting_meanwhile_are_folded_together() -> None:
    server = Server()
    agg = aggregator(server, pace=10.0)
    first = agg(batch("b-1", 100))
    second, third = agg(batch("b-2", 100, T0 + 1)), agg(batch("b-3", 100, T0 + 2))
    assert len(server.sends) == 1  # the next send waits for the answer to this one
    server.sends[0].finish()
    assert first.result(timeout=5).kept == tuple(range(100)) and not second.done()
    [_, merged] = server.sends
    assert [m["count"] for m in merged.metadata()] == [100, 100]  # b-2 and b-3: one point per series
    merged.finish()
    second_result, third_result = second.result(timeout=5), third.result(timeout=5)
    assert second_result.kept == third_result.kept == tuple(range(100))
    assert second_result.stand_ins + third_result.stand_ins == 2  # each point counted once


def test_a_raw_send_too_slow_for_the_server_is_cut_short_and_its_rest_folded() -> None:
    server = Server(supported=None)  # the first batch goes before the client knows
    agg = aggregator(server, pace=20.0)
    first = agg(batch("b-1", 100))
    [raw] = server.sends
    assert raw.batch.batch_id == "b-1"  # whole, with its id: it may go to a batch endpoint
    server.supported = False  # the client found out: single posts, 20 a second
    raw.store(range(10))
    second = agg(batch("b-2", 100, T0 + 1))
    assert raw.abandoned  # 90 + 100 records would take 9.5 s: cut short
    raw.finish(TransientApiError("not sent: cancelled"))
    [_, folded] = server.sends
    assert [m["count"] for m in folded.metadata()] == [45 + 50, 45 + 50]
    folded.finish()
    first_result, second_result = first.result(timeout=5), second.result(timeout=5)
    assert first_result.stored == 10 and first_result.kept == tuple(range(10, 100)) and first_result.ok
    assert second_result.kept == tuple(range(100))


def test_batches_handed_over_before_the_server_was_known_are_copied_and_folded_too() -> None:
    # Was: they were sent raw in the fold (never copied), and a batch sent whole before
    # anyone knew was missing from the upload with `sync --to`.
    copied: list[str] = []
    server = Server(supported=None)
    agg = aggregator(server, pace=10.0, copied=copied)
    first, second = agg(batch("b-1", 20)), agg(batch("b-2", 100, T0 + 1))
    assert copied == [] and len(server.sends) == 1  # nothing known yet: nothing copied
    server.supported = False
    server.sends[0].finish()
    assert first.result(timeout=5).stored == 20 and copied == ["b-1", "b-2"]
    [_, folded] = server.sends
    assert len(folded.batch) == 2 and [m["count"] for m in folded.metadata()] == [50, 50]
    folded.finish()
    assert second.result(timeout=5).kept == tuple(range(100))


def test_records_without_a_raw_copy_on_disk_are_never_folded() -> None:
    server = Server()
    agg = aggregator(server, pace=1.0, kept=False)
    future = agg(batch("b-1", 100))
    server.sends[0].finish()
    assert future.result(timeout=5).stored == 100 and len(server.sends[0].batch) == 100


def test_a_failed_fold_fails_its_records_so_the_dispatcher_sends_them_again() -> None:
    server = Server()
    agg = aggregator(server, pace=10.0)
    future = agg(batch("b-1", 100))
    server.sends[0].finish(TransientApiError("503"))
    result = future.result(timeout=5)
    assert result.kept == () and result.retryable() == list(range(100)) and agg.folded == 0


def test_close_abandons_what_waits_and_tells_what_the_send_under_way_stored() -> None:
    server = Server()
    agg = aggregator(server, pace=1000.0)
    first = agg(batch("b-1", 10))
    second = agg(batch("b-2", 10, T0 + 1))
    server.sends[0].store(range(4))
    partial = first.partial()
    assert partial.stored == 4 and sorted(partial.failed) == list(range(4, 10))
    second.abandon()  # waiting: nothing of it was sent
    result = second.result(timeout=5)
    assert result.stored == 0 and result.retryable() == list(range(10))
    first.abandon()
    assert server.sends[0].abandoned
    server.sends[0].finish(TransientApiError("not sent: cancelled"))
    assert first.result(timeout=5).stored == 4 and len(server.sends) == 1


@pytest.mark.parametrize("mode", ["auto", 0.5])
def test_the_ledger_counts_folded_records_as_spooled_and_the_invariant_holds(mode: str | float) -> None:
    server = Server(auto=True)
    agg = aggregator(server, pace=0.1, mode=mode)  # far behind: everything folds
    store = MemoryStore("w")
    dispatcher = start_dispatcher(agg, store, LoggerConfig(1, None, batch_size=100, flush_interval=0.01))
    try:
        for i in range(1000):
            store.buffer.append(("loss @ 0", float(i), round((T0 + i / 1000) * 1e9), i, CTX))
        assert dispatcher.flush(30)
    finally:
        dispatcher.close(5)
    stats = dispatcher.stats()
    assert stats.logged == 1000 and stats.dropped == {}
    assert stats.folded == stats.spooled == 1000 - stats.stored > 0
    assert stats.logged == stats.stored + stats.spooled + stats.dropped_total
    assert stats.aggregates == sum(len(s.batch) for s in server.sends) - stats.stored
