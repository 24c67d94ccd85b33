"""Faults with the real PostgreSQL: a server process killed, the database stopped, a full pool.

Eight writers (``MetricsLogger`` in subprocesses, each with its own spool) log 300,000
records in all, paced over a few seconds so that the fault lands in the middle of the
burst (the test waits until part of it is stored, never on a timer); afterwards every
record is stored exactly once. Sizes: 37,500 records a writer over about 8 s keeps each
test well under a minute on the 2-core machines, shared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psutil
import pytest
import requests

from mlbench_metrics.server import ServerProcess, serve, spawn
from mlbench_metrics.server.store import Store

from helpers import create_run, values_stored, wait_until

WRITERS = 8
RECORDS = 300_000
PER_WRITER = RECORDS // WRITERS

WRITER = textwrap.dedent(
    """
    import json, sys, threading, time
    from mlbench_metrics import ApiClient, MetricsLogger, RetryPolicy

    url, run_id, writer, count, seconds, spool = sys.argv[1:]
    writer, count, seconds = int(writer), int(count), float(seconds)
    client = ApiClient(url=url, retry=RetryPolicy(max_attempts=3, backoff_base=0.05, backoff_max=0.5, max_delay=3))
    log = MetricsLogger(int(run_id), client=client, spool_dir=spool)
    training = threading.Event()  # never set: its wait() is training time between slices
    start, slices = time.monotonic(), 40
    for s in range(slices):
        for i in range(writer * count + s * count // slices, writer * count + (s + 1) * count // slices):
            log.log("x", i)
        training.wait(max(0.0, start + (s + 1) * seconds / slices - time.monotonic()))
    delivered = log.flush(240)
    stats = log.stats
    log.close(60)
    client.close()
    print(json.dumps({"flushed": delivered, "spooled": stats.spooled, "dropped": stats.dropped_total}))
    """
)


def _start_writers(url: str, run_id: int, tmp_path: Path, seconds: float) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                url,
                str(run_id),
                str(w),
                str(PER_WRITER),
                str(seconds),
                str(tmp_path / f"s{w}"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]


def _finish(writers: list[subprocess.Popen[str]]) -> list[dict[str, int]]:
    out = []
    for proc in writers:
        stdout, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def _stored(db: str, run_id: int) -> int:
    with closing(Store(db)) as store:
        return store.count_metrics(run_id)


@pytest.fixture
def team(postgres_url: str) -> Iterator[ServerProcess]:
    with spawn(db_path=postgres_url, args=["--workers", "4"]) as server:
        yield server


def test_a_server_process_killed_mid_burst_loses_and_doubles_nothing(team: ServerProcess, tmp_path: Path) -> None:
    run = create_run(team.url)
    writers = _start_writers(team.address, run["id"], tmp_path, seconds=8)
    try:
        wait_until(lambda: _stored(team.db_path, run["id"]) >= RECORDS // 10, 120, "a tenth of the burst stored")
        assert all(w.poll() is None for w in writers)  # mid-burst
        victim = psutil.Process(team.pid).children()[1]
        victim.kill()
    finally:
        results = _finish(writers)
    assert all(r["dropped"] == 0 for r in results), results
    assert values_stored(team.db_path, run["id"]) == list(range(RECORDS))  # each exactly once
    assert len(psutil.Process(team.pid).children()) == 4  # the parent started another


def _cluster() -> tuple[str, str]:
    if os.geteuid() != 0 or not Path("/usr/bin/pg_ctlcluster").exists():
        from postgres import unavailable

        unavailable("stopping PostgreSQL needs root and pg_ctlcluster (Debian's PostgreSQL)")
    fields = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True).stdout.split()
    return fields[0], fields[1]


def _online() -> bool:
    return "online" in subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout


def test_postgresql_stopped_for_ten_seconds_mid_burst(team: ServerProcess, tmp_path: Path) -> None:
    version, cluster = _cluster()
    run = create_run(team.url)
    writers = _start_writers(team.address, run["id"], tmp_path, seconds=16)
    stopped = False
    try:
        wait_until(lambda: _stored(team.db_path, run["id"]) >= RECORDS // 10, 120, "a tenth of the burst stored")
        subprocess.run(["pg_ctlcluster", version, cluster, "stop", "-m", "fast"], check=True, timeout=60)
        stopped = True
        assert all(w.poll() is None for w in writers)  # mid-burst
        ten_seconds = threading.Event()  # never set: the outage's length
        ten_seconds.wait(10)
        during = requests.get(team.url + "/readyz", timeout=30)
        assert during.status_code == 503 and during.headers["Retry-After"]
    finally:
        if stopped or not _online():  # PostgreSQL runs again whatever happened
            subprocess.run(["pg_ctlcluster", version, cluster, "start"], check=True, timeout=120)
        results = _finish(writers)
    assert all(r["dropped"] == 0 and r["spooled"] == 0 for r in results), results  # the spools drained
    assert values_stored(team.db_path, run["id"]) == list(range(RECORDS))  # each exactly once
    left = [str(p) for w in range(WRITERS) for p in (tmp_path / f"s{w}").glob(f"run-{run['id']}/**/*")]
    assert not left  # a delivered spool is cleaned up


def test_a_full_connection_pool_answers_503_with_retry_after_rather_than_hanging(postgres_url: str) -> None:
    with serve(db_path=postgres_url, pool_size=1, pool_timeout=0.5) as server:
        with server.store.db.read():  # the only connection, busy
            answer = requests.get(server.url + "/api/runs/", timeout=30)
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
            assert "connections" in answer.json()["message"]
        assert requests.get(server.url + "/api/runs/", timeout=30).status_code == 200  # free again
