"""A server as slow as the dashboard (``serve(extensions=False, pace=N)``): aggregates keep it
up, the accounting adds up, close stays within its timeout, and ``sync --to`` puts every
raw record exactly once on a server with the batch endpoint, however often it runs."""

from __future__ import annotations

import collections
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import ScriptedServer, Seen, forward, http_response
from mlbench_metrics import MetricsLogger, Stats
from mlbench_metrics.server import ServerHandle, serve
from mlbench_metrics.server.store import Store

from helpers import create_run

Point = tuple[str, int, str, str]  # name, date_us, value, metadata


def balanced(stats: Stats) -> bool:
    return stats.logged == stats.stored + stats.spooled + stats.dropped_total


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlbench_metrics.cli", *args], capture_output=True, text=True, timeout=300
    )


def points(server: ServerHandle, run_id: int) -> list[Point]:
    store = Store(server.db_path)
    try:
        return [(name, p[0], p[1], p[3]) for name, series in store.series(run_id=run_id) for p in series]
    finally:
        store.close()


def raw_and_folded(found: list[Point]) -> tuple[collections.Counter[tuple[str, int, str]], int, int]:
    """Raw records (counted), aggregate points, and the records those stand for."""
    aggregates = [json.loads(m) for _, _, _, m in found if '"aggregate"' in m]
    raw = collections.Counter((n, d, v) for n, d, v, m in found if '"aggregate"' not in m)
    return raw, len(aggregates), sum(a["count"] for a in aggregates)


def log_steps(log: MetricsLogger, steps: int) -> None:
    for step in range(steps):
        log.log("loss", 1.0 / (step + 1), step=step)
        log.log("acc", step / 10, step=step)
        log.increment("samples", 32)


@pytest.fixture
def paced() -> Iterator[ServerHandle]:
    """As slow as the dashboard, and without its batch endpoint: 100 single posts a second."""
    with serve(extensions=False, pace=100) as handle:
        yield handle


@pytest.fixture
def target() -> Iterator[ServerHandle]:
    """Where ``sync --to`` uploads: an embedded server with the batch endpoint."""
    with serve() as handle:
        yield handle


def uploaded_once(target: ServerHandle, run_id: int, logged: int) -> bool:
    found = collections.Counter((n, d, v) for n, d, v, _ in points(target, run_id))
    return len(found) == logged and set(found.values()) == {1}


@pytest.mark.parametrize("durable", [False, True], ids=["spool", "durable"])
def test_a_slow_server_gets_aggregates_and_sync_to_uploads_every_record_once(
    paced: ServerHandle, target: ServerHandle, tmp_path: Path, durable: bool
) -> None:
    # Was: every record was posted on its own, so the charts fell behind by as much as
    # the load exceeded the server's pace (57-60 s after a minute at 5x).
    run = create_run(paced.url)
    log = MetricsLogger(
        run["id"], url=paced.address, rank=0, batch_size=200, flush_interval=0.2, spool_dir=tmp_path, durable=durable
    )
    log_steps(log, 500)  # 1,500 records: 15 s of the server's time, one by one
    assert log.flush(120), log.stats
    stats = log.stats
    assert balanced(stats) and stats.dropped == {}
    assert stats.folded > 750 and stats.aggregates < stats.folded / 10 and stats.spooled == stats.folded
    raw, aggregates, standing_for = raw_and_folded(points(paced, run["id"]))
    assert sum(raw.values()) == stats.stored and set(raw.values()) <= {1}
    assert (aggregates, standing_for) == (stats.aggregates, stats.folded)
    assert log.close() == 0  # nothing left for `sync`: folded records are not "undelivered"
    assert balanced(log.stats)

    kept = cli("sync", str(tmp_path), "--url", paced.address)  # the run's own server: nothing is owed
    assert kept.returncode == 0 and "raw copies" in kept.stdout and "--to URL" in kept.stdout, kept.stdout
    crash_copy = tmp_path.parent / f"{tmp_path.name}-again"
    shutil.copytree(tmp_path, crash_copy)  # as if a first upload died before it could mark anything
    into = create_run(target.url)["id"]
    uploaded = cli("sync", str(tmp_path), "--to", target.address, "--to-run", str(into))
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    assert f"{stats.logged:,} raw records uploaded" in uploaded.stdout
    assert not list(tmp_path.glob("run-*/*"))  # all uploaded, nothing owed: the directory is gone
    again = cli("sync", str(crash_copy), "--to", target.address, "--to-run", str(into))
    assert again.returncode == 0 and f"{stats.logged:,} already there" in again.stdout, again.stdout
    assert uploaded_once(target, into, stats.logged)
    names = {n for n, _, _, _ in points(target, into)}
    assert names == {"loss @ 0", "acc @ 0", "samples @ 0"}


def test_close_against_a_slow_server_returns_in_time_and_a_later_sync_stores_nothing_twice(
    paced: ServerHandle, target: ServerHandle, tmp_path: Path
) -> None:
    # The paced server stores the first 4 single posts (a record, then one batch's 3
    # aggregate points) and answers 503 to every later one: the rest is left at close.
    posts = itertools.count()

    def first_four(seen: Seen, index: int) -> Any:
        if seen.method == "POST" and seen.path.startswith("/api/metrics") and next(posts) >= 4:
            return http_response(503, "{}")
        return forward(paced.url, seen)

    run = create_run(paced.url)
    with ScriptedServer(first_four) as proxy:
        log = MetricsLogger(run["id"], url=proxy.address, rank=1, batch_size=500, spool_dir=tmp_path)
        log.log("warmup", 1.0)
        assert log.flush(30)  # now the server is known: no batch endpoint
        log_steps(log, 200)
        closing = time.monotonic()
        left = log.close(timeout=2.0)
        took = time.monotonic() - closing
    stats = log.stats
    assert took <= 2.5 and balanced(stats) and stats.dropped == {}
    assert (stats.stored, stats.folded, stats.aggregates, left) == (1, 500, 3, 100)
    assert left == stats.spooled - stats.folded  # what waits for `sync`, apart from the raw copies
    synced = cli("sync", str(tmp_path), "--url", paced.address)  # what is left, to the run's server
    assert synced.returncode == 0 and "100 delivered" in synced.stdout, synced.stdout + synced.stderr
    # the copies hold every record (the warm-up too); only 500 of them were folded
    assert "raw copies of 601 records, 500 of which the server got only as aggregates" in synced.stdout, synced.stdout
    raw, aggregates, standing_for = raw_and_folded(points(paced, run["id"]))
    assert set(raw.values()) == {1} and aggregates == 3  # no record stored twice there ...
    assert sum(raw.values()) + standing_for == stats.logged  # ... and each stands there once
    into = create_run(target.url)["id"]
    uploaded = cli("sync", str(tmp_path), "--to", target.address, "--to-run", str(into))
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    assert uploaded_once(target, into, stats.logged)
    assert not list(tmp_path.glob("run-*/*"))


@pytest.mark.parametrize(
    ("pace", "aggregate"), [(None, "auto"), (200, "off")], ids=["batch-endpoint", "off-on-a-slow-server"]
)
def test_without_folding_every_record_is_stored_raw_and_no_copy_is_kept(
    tmp_path: Path, pace: float | None, aggregate: str
) -> None:
    with serve(extensions=pace is None, pace=pace) as server:
        run = create_run(server.url)
        log = MetricsLogger(run["id"], url=server.address, flush_interval=0.1, spool_dir=tmp_path, aggregate=aggregate)
        log_steps(log, 100)
        assert log.flush(60)
        assert log.close() == 0
        stats = log.stats
        assert (stats.stored, stats.folded, stats.aggregates, stats.spooled) == (300, 0, 0, 0)
        raw, aggregates, _ = raw_and_folded(points(server, run["id"]))
        assert sum(raw.values()) == 300 and aggregates == 0
    assert not list(tmp_path.glob("run-*/*"))  # the copies made before the server was known are gone


def test_sync_to_needs_the_batch_endpoint_and_the_run(
    paced: ServerHandle, target: ServerHandle, tmp_path: Path
) -> None:
    run = create_run(paced.url)
    log = MetricsLogger(run["id"], url=paced.address, batch_size=100, flush_interval=0.2, spool_dir=tmp_path)
    log_steps(log, 200)
    assert log.flush(60) and log.stats.folded
    log.close()
    refused = cli("sync", str(tmp_path), "--to", paced.address)
    assert refused.returncode == 1 and "no batch endpoint" in refused.stderr and "Traceback" not in refused.stderr
    missing = cli("sync", str(tmp_path), "--to", target.address, "--to-run", "999")
    assert missing.returncode == 1 and "run 999 does not exist" in missing.stderr
    misused = cli("sync", str(tmp_path), "--to-run", "1")
    assert misused.returncode == 2 and "--to-run goes with --to" in misused.stderr
    assert not points(target, 999) and list(tmp_path.glob("run-*/*/raw-*.log"))  # nothing sent, all kept


def test_a_fixed_window_always_folds(paced: ServerHandle) -> None:
    run = create_run(paced.url)
    with pytest.raises(ValueError, match='aggregate must be "auto", "off" or a positive number of seconds'):
        MetricsLogger(run["id"], url=paced.address, aggregate="sometimes")
    # Deliveries only at flush(), so each is one batch; a window far longer than the test.
    log = MetricsLogger(run["id"], url=paced.address, flush_interval=3600, aggregate=1e9)
    log.log("loss", 1.0)  # the first batch goes before the server is known: raw
    assert log.flush(30)
    log_steps(log, 50)
    assert log.flush(30)
    log.close()
    stats = log.stats
    assert (stats.stored, stats.folded, stats.aggregates) == (1, 150, 3)  # one point per series
