"""The dispatcher's bookkeeping, driven step by step without its thread."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from mlbench_metrics._dispatch import Context, Dispatcher


def test_memory_bound_drops_the_oldest_batches_once_each_without_a_store() -> None:
    sent: list[Future[Any]] = []

    def deliver(batch: Any) -> Future[Any]:
        sent.append(Future())  # never answered: a server that hangs
        return sent[-1]

    dispatcher = Dispatcher(deliver, batch_size=100, flush_interval=1.0, max_buffer=1000, max_in_flight=1)
    ctx = Context(None, 0, None)
    for i in range(5000):
        dispatcher.buffer.append(("x", i, i, None, ctx))
    dispatcher._cycle()  # what one wake-up of the thread does
    stats = dispatcher.stats()
    assert len(sent) == 1 and stats.in_flight == 100
    assert stats.pending <= 1000  # memory bounded: the oldest waiting batches were dropped
    assert stats.dropped == {"overflow": 5000 - 100 - stats.pending}  # each counted once
    assert stats.logged == 5000 and stats.last_error is None  # (was: "... is not in deque")
