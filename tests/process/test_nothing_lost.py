"""Nothing lost: a server that goes away, a flaky network, a killed trainer, a torn spool.

Real subprocesses, real files, the embedded server on 127.0.0.1 (in its own process where
it has to stop and start again on the same database).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fakes import RESET, ScriptedServer, Seen, forward, http_response
from mlbench_metrics import ApiClient, MetricsLogger, RetryPolicy
from mlbench_metrics.server import ServerHandle, spawn

from helpers import closed_port, create_run, values_stored

QUICK = RetryPolicy(max_attempts=2, backoff_base=0.05, backoff_max=0.2, max_delay=2)


def sync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlbench_metrics.cli", "sync", *args], capture_output=True, text=True, timeout=300
    )


def test_server_down_for_ten_seconds_in_the_middle(tmp_path: Path) -> None:
    with spawn(db_path=str(tmp_path / "m.db")) as server:
        run = create_run(server.url)
        client = ApiClient(url=server.address, retry=QUICK)
        log = MetricsLogger(run["id"], client=client, spool_dir=tmp_path / "spool")
        for i in range(50_000):
            log.log("x", i)
        server.stop()  # down for ten seconds while training goes on
        training = threading.Event()  # never set: its wait() is ten seconds of training time
        started = time.monotonic()
        for second in range(10):
            for i in range(50_000 + second * 5000, 50_000 + (second + 1) * 5000):
                log.log("x", i)
            training.wait(max(0.0, started + second + 1 - time.monotonic()))
        during = log.stats
        server.start()
        assert log.flush(180), log.stats
        stats = log.stats
        log.close()
        client.close()
        assert values_stored(server.db_path, run["id"], "x") == list(range(100_000))  # each exactly once
    assert during.spooled > 0  # the outage went through the spool
    assert stats.dropped_total == 0 and stats.spooled == 0
    assert not (tmp_path / "spool" / f"run-{run['id']}").exists()  # delivered spool is cleaned up


def flaky_proxy(target: str, rng: random.Random) -> Any:
    """Answer 500 to 30% of requests and drop 10% of connections, before or after forwarding."""
    lock = threading.Lock()

    def script(seen: Seen, index: int) -> Any:
        with lock:
            roll = rng.random()
        forward_first = roll < 0.15 or 0.30 <= roll < 0.35
        if roll >= 0.40 or forward_first:
            answer = forward(target, seen)
            if roll >= 0.40:
                return answer
        if roll < 0.30:
            return http_response(500, "{}")
        return RESET

    return script


def test_a_flaky_server_still_gets_everything_exactly_once(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    with ScriptedServer(flaky_proxy(fresh_server.url, random.Random(7))) as proxy:
        client = ApiClient(url=proxy.address, retry=QUICK)
        log = MetricsLogger(run["id"], client=client, flush_interval=0.05, spool_dir=tmp_path)
        for i in range(20_000):
            log.log("x", i)
        assert log.flush(180), log.stats
        stats = log.stats
        log.close()
        client.close()
    assert values_stored(fresh_server.db_path, run["id"], "x") == list(range(20_000))
    assert stats.retried > 0 and stats.dropped_total == 0


def test_sigkill_in_durable_mode_then_sync(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    spool = tmp_path / "spool"
    env = {**os.environ, "MLBENCH_METRICS_SPOOL_DIR": str(spool)}
    code = textwrap.dedent(f"""
        import mlbench_metrics
        log = mlbench_metrics.init({run["id"]}, url={fresh_server.address!r}, durable=True, flush_interval=0.2)
        i = 0
        while True:
            log.log("x", i)
            i += 1
            if i % 20000 == 0:
                print(i, flush=True)   # every record below i has returned from log()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    returned = 0
    for _ in range(5):
        returned = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)  # an OOM kill: no exit hook, no flush
    proc.wait()
    result = sync(str(spool), "--url", fresh_server.address)
    assert result.returncode == 0, result.stdout + result.stderr
    stored = values_stored(fresh_server.db_path, run["id"], "x")
    assert stored == list(range(len(stored)))  # no gap, no duplicate
    assert len(stored) >= returned
    again = sync(str(spool), "--url", fresh_server.address)  # safe to run twice
    assert again.returncode == 0 and "nothing to sync" in again.stdout
    assert values_stored(fresh_server.db_path, run["id"], "x") == stored


def _spool_with_undelivered(tmp_path: Path, run_id: int, records: int, **kwargs: Any) -> tuple[MetricsLogger, Path]:
    with ScriptedServer(lambda seen, i: RESET) as dead:
        client = ApiClient(url=dead.address, retry=RetryPolicy.none())
        log = MetricsLogger(run_id, client=client, batch_size=100, spool_dir=tmp_path, **kwargs)
        for i in range(records):
            log.log("x", i)
        log.close(timeout=1)
        client.close()
    writer = log.spool_dir
    assert writer is not None and writer.exists()
    return log, writer


def test_a_torn_spool_file_replays_the_rest_and_reports_it(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    log, writer = _spool_with_undelivered(tmp_path, run["id"], 1000)
    assert log.stats.spooled == 1000 and log.stats.dropped_total == 0
    spool_file = sorted(writer.glob("spool-*.log"))[-1]
    data = spool_file.read_bytes()
    spool_file.write_bytes(data[: len(data) - 200])  # cut inside the last batch
    result = sync(str(tmp_path), "--url", fresh_server.address)
    assert result.returncode == 1  # something could not be delivered
    assert "900 delivered" in result.stdout and "100 torn" in result.stdout  # (was: "1 torn")
    stored = values_stored(fresh_server.db_path, run["id"], "x")
    torn = sorted(set(range(1000)) - set(stored))  # the batch written last (batches fail in any order)
    assert len(stored) == 900 and torn == list(range(torn[0], torn[0] + 100)) and torn[0] % 100 == 0
    again = sync(str(tmp_path), "--url", fresh_server.address)
    assert "0 delivered" in again.stdout  # the rest was acknowledged: nothing is sent twice
    assert sorted(values_stored(fresh_server.db_path, run["id"], "x")) == sorted(stored)


def test_the_size_bound_drops_the_oldest_and_counts_them(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    log, writer = _spool_with_undelivered(tmp_path, run["id"], 100_000, spool_max_bytes=1 << 20)
    stats = log.stats
    assert stats.dropped.get("spool_full", 0) > 0
    size = sum(p.stat().st_size for p in writer.iterdir())
    assert size <= (1 << 20) + (1 << 20) // 8  # the bound, give or take the newest file
    result = sync(str(writer), "--url", fresh_server.address)
    assert result.returncode == 0, result.stderr
    stored = values_stored(fresh_server.db_path, run["id"], "x")
    assert len(stored) == 100_000 - stats.dropped["spool_full"] == stats.spooled
    assert stored[-1] == 99_999  # the newest records were kept


def test_sync_leaves_a_live_writer_alone(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    log = MetricsLogger(run["id"], url=fresh_server.address, durable=True, spool_dir=tmp_path)
    log.log("x", 1)
    assert log.flush(30)
    result = sync(str(tmp_path), "--url", fresh_server.address)
    assert "still running" in result.stdout
    log.close()
    assert not list(tmp_path.glob("run-*/*"))  # closed with everything delivered: nothing left
    assert sync(str(tmp_path)).stdout.strip() == "nothing to sync"


def test_sync_errors(tmp_path: Path) -> None:
    result = sync(str(tmp_path / "missing"))
    assert result.returncode == 2 and "no such directory" in result.stderr
    writer = tmp_path / "run-1" / "w"
    writer.mkdir(parents=True)
    (writer / "meta.json").write_text(json.dumps({"run_id": 1, "endpoint": ""}))
    result = sync(str(tmp_path))
    assert result.returncode == 1 and "pass --url" in result.stderr


@pytest.mark.parametrize("durable", [False, True])
def test_what_close_counts_as_spooled_is_on_disk_when_the_process_exits_at_once(
    fresh_server: ServerHandle, tmp_path: Path, durable: bool
) -> None:
    # A slow disk (each spool write 20 ms), a server that refuses connections, and an
    # exit right after close(0.3): every record close() counted as spooled must be there
    # for sync (was: counted dropped while still being written, or lost with the process).
    run = create_run(fresh_server.url)
    code = textwrap.dedent(f"""
        import json, os, time
        from mlbench_metrics import MetricsLogger
        from mlbench_metrics.spool.batches import BatchSpool
        put = BatchSpool.put
        BatchSpool.put = lambda self, batches: (time.sleep(0.02), put(self, batches))[1]
        log = MetricsLogger({run["id"]}, url={closed_port()!r}, spool_dir={str(tmp_path)!r}, batch_size=100,
                            durable={durable})
        for i in range(1000):
            log.log("x", i)
        log.close(timeout=0.3)
        s = log.stats
        print(json.dumps({{"logged": s.logged, "stored": s.stored, "spooled": s.spooled,
                           "dropped": s.dropped_total}}), flush=True)
        os._exit(0)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["logged"] == 1000 == stats["stored"] + stats["spooled"] + stats["dropped"]
    result = sync(str(tmp_path), "--url", fresh_server.address)
    assert result.returncode == 0, result.stdout + result.stderr
    stored = values_stored(fresh_server.db_path, run["id"], "x")
    assert len(stored) == len(set(stored)) >= stats["spooled"]
