"""``sync`` delivers with the logger's concurrency: up to four batches in flight.

Before, sync sent one batch and waited for its answer before the next (70 records/s
against the dashboard where live delivery reached 164/s). The server here lets the first
batches through only once four of them are waiting at the same time: a sync that sends
one at a time never gets there (the barrier breaks after its timeout).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes import ScriptedServer, Together
from mlbench_metrics import ApiClient
from mlbench_metrics.records import Context
from mlbench_metrics.server import ServerHandle
from mlbench_metrics.spool import DurableStore, SpoolDir, sync_writer

from helpers import create_run, spool_batches, values_stored

BATCHES, PER_BATCH = 10, 5


def spooled(root: Path, run_id: int, durable: bool) -> Path:
    """A dead writer's directory holding ``BATCHES`` batches of ``PER_BATCH`` records."""
    if not durable:
        return Path(spool_batches(root, run_id, "unused", 0, BATCHES, PER_BATCH))
    directory = SpoolDir(root, run_id, {"endpoint": "unused", "durable": True})
    store = DurableStore(directory, 1 << 30, "w", lambda: None)
    for i in range(BATCHES * PER_BATCH):
        store.write("x", i, i, None, Context(None, 0, None))
    store.close(everything_settled=False)
    directory.release(remove=False)
    return directory.path


@pytest.mark.parametrize("durable", [False, True])
def test_sync_keeps_four_batches_in_flight(fresh_server: ServerHandle, tmp_path: Path, durable: bool) -> None:
    run = create_run(fresh_server.url)
    path = spooled(tmp_path, run["id"], durable)
    together = Together(4, fresh_server.url)
    with ScriptedServer(together) as proxy, ApiClient(url=proxy.address) as client:
        report = sync_writer(path, client, batch_size=PER_BATCH)
    assert not together.alone, "the first batches were not in flight together"
    assert report.ok, report.errors
    assert report.delivered == BATCHES * PER_BATCH
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(BATCHES * PER_BATCH))
    assert not path.exists()
