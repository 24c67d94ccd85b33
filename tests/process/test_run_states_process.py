"""Run states a person can trust, from real logging processes: finished, failed, crashed.

The server takes a writer silent for 2 s for dead (``writer_timeout``); the tests wait on
conditions with generous timeouts, never on a sleep.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from fakes import ScriptedServer, Seen, forward
from mlbench_metrics import MetricsLogger, Run
from mlbench_metrics.records import parse_date
from mlbench_metrics.server import ServerHandle, serve

from helpers import create_run, wait_until

TIMEOUT = 2.0


@pytest.fixture
def quick() -> Iterator[ServerHandle]:
    handle = serve(writer_timeout=TIMEOUT)
    try:
        yield handle
    finally:
        handle.stop()


def start_writer(server: ServerHandle, run_id: int, body: str) -> subprocess.Popen[str]:
    """A training script logging to the run; it prints "ready" once its first records are stored."""
    env = {**os.environ, "MLBENCH_METRICS_URL": server.address, "MLBENCH_METRICS_RUN_ID": str(run_id)}
    for name in ("RANK", "MLBENCH_METRICS_RANK", "MLBENCH_METRICS_DELIVERY"):
        env.pop(name, None)
    head = """
        import mlbench_metrics, sys
        log = mlbench_metrics.init(flush_interval=0.05)
        log.log("loss", 0.5, step=1)
        assert log.flush(30)
        print("ready", flush=True)
    """
    code = textwrap.dedent(head) + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def state(server: ServerHandle, run_id: int) -> str:
    return Run.get(run_id, url=server.address).state


def writers(server: ServerHandle, run_id: int) -> list[dict[str, Any]]:
    answer = requests.get(f"{server.url}/api/runs/{run_id}/writers/").json()
    return list(answer["writers"])


def test_a_running_run_turns_finished_at_close(quick: ServerHandle) -> None:
    run = create_run(quick.url)
    log = MetricsLogger(run["id"], url=quick.address, flush_interval=0.05)
    log.log("loss", 1.0)
    assert log.flush(30)
    wait_until(lambda: state(quick, run["id"]) == "started", what="the run to be started")
    started = Run.get(run["id"], url=quick.address)
    assert started.started_at is not None and started.last_seen_at is not None and started.finished_at is None
    log.close()
    after = Run.get(run["id"], url=quick.address)
    assert after.state == "finished" and after.finished_at is not None


def test_a_run_the_logger_created_ends_finished_or_failed(quick: ServerHandle) -> None:
    with MetricsLogger(new_run="own-run", url=quick.address) as log:
        log.log("x", 1)
    assert state(quick, log.run_id) == "finished"
    with pytest.raises(RuntimeError), MetricsLogger(new_run="own-run-2", url=quick.address) as log:
        log.log("x", 1)
        raise RuntimeError("boom")
    assert state(quick, log.run_id) == "failed"


def test_an_idle_writer_stays_started_on_heartbeats_and_a_killed_one_turns_crashed(quick: ServerHandle) -> None:
    run = create_run(quick.url)
    proc = start_writer(quick, run["id"], "sys.stdin.read()\n")
    try:

        def alive_past_timeout() -> bool:
            (w,) = writers(quick, run["id"])
            span = parse_date(w["last_seen_at"]) - parse_date(w["first_seen_at"])
            return bool(w["alive"]) and span > 2 * TIMEOUT * 1e6

        # Heartbeats, not luck: the writer's last report moves on while it logs nothing.
        wait_until(alive_past_timeout, what="heartbeats to keep the idle writer alive past the timeout")
        proc.kill()
        proc.wait(30)
        wait_until(lambda: state(quick, run["id"]) == "crashed", what="the killed writer's run to read crashed")
        (w,) = writers(quick, run["id"])
        assert w["alive"] is False and w["closed_at"] is None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_an_uncaught_exception_fails_the_run(quick: ServerHandle) -> None:
    run = create_run(quick.url)
    proc = start_writer(quick, run["id"], "raise ValueError('diverged')\n")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "diverged" in err
    assert state(quick, run["id"]) == "failed"


def test_sigterm_fails_the_run(quick: ServerHandle) -> None:
    run = create_run(quick.url)
    proc = start_writer(quick, run["id"], "sys.stdin.read()\n")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert state(quick, run["id"]) == "failed"


def test_a_clean_exit_finishes_the_run_without_close(quick: ServerHandle) -> None:
    run = create_run(quick.url)
    proc = start_writer(quick, run["id"], "")
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert state(quick, run["id"]) == "finished"


def test_against_a_server_without_writers_nothing_new_is_sent() -> None:
    with serve(extensions=False) as dashboard_like:
        run = create_run(dashboard_like.url)
        with ScriptedServer(lambda seen, i: forward(dashboard_like.url, seen)) as proxy:
            log = MetricsLogger(run["id"], url=proxy.address, flush_interval=0.02, rank=0)
            for i in range(20):
                log.log("loss", i, step=i)
            assert log.flush(30)
            # The tick after the delivery found no writers: from then on nothing is asked.
            wait_until(lambda: log._liveness is not None and log._liveness.supported is False, what="the tick")
            log.close()
            seen: list[Seen] = list(proxy.requests)
    kinds = sorted({(s.method, s.path) for s in seen})
    run_path = f"/api/runs/{run['id']}/"  # init() asks once whether the run exists
    assert kinds == [("GET", "/api/"), ("GET", run_path), ("POST", "/api/metrics/")]
    assert sum(s.path == "/api/metrics/" for s in seen) == 20
    assert sum(s.path == "/api/" for s in seen) == 1 and sum(s.path == run_path for s in seen) == 1


def test_two_writers_without_ranks_get_one_warning(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    run = create_run(server.url)
    caplog.set_level(logging.WARNING, logger="mlbench_metrics")
    first = MetricsLogger(run["id"], url=server.address, flush_interval=0.02)
    first.log("loss", 1.0)
    assert first.flush(30)
    wait_until(lambda: len(writers(server, run["id"])) == 1, what="the first writer")
    second = MetricsLogger(run["id"], url=server.address, flush_interval=0.02)
    second.log("loss", 2.0)
    assert second.flush(30)
    wait_until(lambda: any("rank=" in r.getMessage() for r in caplog.records), what="the warning")
    first.close()
    second.close()
    warnings = [r.getMessage() for r in caplog.records if "rank=" in r.getMessage()]
    assert len(warnings) == 1 and "without a rank" in warnings[0]
    assert state(server, run["id"]) == "finished"


def test_distinct_ranks_get_no_warning(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    run = create_run(server.url)
    caplog.set_level(logging.WARNING, logger="mlbench_metrics")
    loggers = [MetricsLogger(run["id"], url=server.address, flush_interval=0.02, rank=r) for r in (0, 1)]
    for log in loggers:
        log.log("loss", 1.0)
        assert log.flush(30)
    wait_until(lambda: all(w["last_seen_at"] != w["first_seen_at"] for w in writers(server, run["id"])), what="beats")
    for log in loggers:
        log.close()
    assert not [r for r in caplog.records if "rank=" in r.getMessage()]
    assert state(server, run["id"]) == "finished"
