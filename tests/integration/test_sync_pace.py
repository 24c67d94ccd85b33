"""``sync`` delivers with the logger's concurrency: up to four batches in flight.

Before, sync sent one batch and waited for its answer before the next (70 records/s
against the dashboard where live delivery reached 164/s). The server here lets the first
batches through only once four of them are waiting at the same time: a sync that sends
one at a time never gets there (the barrier breaks after its timeout).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fakes import ScriptedServer, Seen, forward, http_response
from mlbench_metrics import ApiClient
from mlbench_metrics.records import Context, MetricBatch
from mlbench_metrics.server import ServerHandle
from mlbench_metrics.spool import BatchSpool, DurableStore, SpoolDir, sync_writer

from helpers import create_run, values_stored

BATCHES, PER_BATCH = 10, 5


def spooled(root: Path, run_id: int, durable: bool) -> Path:
    """A dead writer's directory holding ``BATCHES`` batches of ``PER_BATCH`` records."""
    directory = SpoolDir(root, run_id, {"endpoint": "unused", "durable": durable})
    if durable:
        store = DurableStore(directory, 1 << 30, "w", lambda: None)
        for i in range(BATCHES * PER_BATCH):
            store.write("x", i, i, None, Context(None, 0, None))
        store.close(everything_settled=False)
    else:
        spool = BatchSpool(directory, 1 << 30)
        spool.put(
            [
                MetricBatch(
                    ["x"] * PER_BATCH,
                    list(range(b * PER_BATCH, (b + 1) * PER_BATCH)),
                    [1] * PER_BATCH,
                    [""] * PER_BATCH,
                    [False] * PER_BATCH,
                    batch_id=f"b{b}",
                )
                for b in range(BATCHES)
            ]
        )
        spool.close()
    directory.release(remove=False)
    return directory.path


@pytest.mark.parametrize("durable", [False, True])
def test_sync_keeps_four_batches_in_flight(fresh_server: ServerHandle, tmp_path: Path, durable: bool) -> None:
    run = create_run(fresh_server.url)
    path = spooled(tmp_path, run["id"], durable)
    together = threading.Barrier(4, timeout=15)
    alone: list[int] = []
    batches = iter(range(1_000_000))
    lock = threading.Lock()

    def script(seen: Seen, index: int) -> bytes:
        if seen.method == "POST" and seen.path.rstrip("/").endswith("/metrics/batch"):
            with lock:
                number = next(batches)
            if number < 4:
                try:
                    together.wait()
                except threading.BrokenBarrierError:
                    alone.append(number)
                    return http_response(503, '{"detail": "only one batch at a time came"}')
        return forward(fresh_server.url, seen)

    with ScriptedServer(script) as proxy, ApiClient(url=proxy.address) as client:
        report = sync_writer(path, client, batch_size=PER_BATCH)
    assert not alone, "the first batches were not in flight together"
    assert report.ok, report.errors
    assert report.delivered == BATCHES * PER_BATCH
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(BATCHES * PER_BATCH))
    assert not path.exists()
