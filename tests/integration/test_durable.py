"""Durable mode in one process: threads that log at once, each record stored exactly once."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import ServerHandle
from mlbench_metrics.server.store import Store

from helpers import create_run


def stored_values(server: ServerHandle, run_id: int) -> dict[str, list[int]]:
    store = Store(server.db_path)
    try:
        return {name: sorted(int(float(p[1])) for p in points) for name, points in store.series(run_id=run_id)}
    finally:
        store.close()


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond, so threads often queue records out of turn."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_threads_logging_at_once_are_stored_exactly_once(
    fresh_server: ServerHandle, tmp_path: Path, fast_switching: None
) -> None:
    run = create_run(fresh_server.url)
    log = MetricsLogger(run["id"], url=fresh_server.address, durable=True, spool_dir=tmp_path, batch_size=100)
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        start.wait(30)
        for i in range(5000):
            log.log(f"t{k}", i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert log.flush(60)
    stats = log.stats
    assert stats.logged == stats.stored == 20_000
    log.close()
    assert stored_values(fresh_server, run["id"]) == {f"t{k}": list(range(5000)) for k in range(4)}
    assert not list(tmp_path.glob("run-*/*"))  # everything delivered: the log is gone
