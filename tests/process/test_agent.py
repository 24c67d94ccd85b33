"""Process delivery: the training process writes, an agent process delivers.

Real processes killed for real (SIGKILL to a trainer's whole process group, SIGKILL to
an agent), the embedded server on 127.0.0.1, and the spool on disk. Every test checks
what the server holds: each record exactly once.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from fakes import RESET, ScriptedServer, Seen, forward, http_response
from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import ServerHandle
from mlbench_metrics.spool.files import try_lock

from helpers import create_run, values_stored, wait_until


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def no_writer_dirs(spool: Path) -> bool:
    return not any(p.is_dir() for p in spool.glob("run-*/*"))


def deliver_in_process(
    server: ServerHandle,
    spool_dir: Path,
    n: int,
    check: Callable[[MetricsLogger], Any] = lambda log: None,
    **options: Any,
) -> None:
    """Log ``n`` records with process delivery, flush, ``check`` the open logger, close,
    and assert the server holds each record exactly once."""
    run = create_run(server.url)
    with MetricsLogger(run["id"], url=server.address, delivery="process", spool_dir=spool_dir, **options) as log:
        for i in range(n):
            log.log("x", i)
        assert log.flush(60), log.stats
        check(log)
    assert values_stored(server.db_path, run["id"]) == list(range(n))


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_the_training_process_only_writes(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    log = MetricsLogger(run["id"], url=fresh_server.address, delivery="process", spool_dir=tmp_path)
    assert log.delivery == "process" and log.durable
    for i in range(50_000):
        log.log("x", i)
    log.increment("samples", 3)
    with log.timer("phase"):
        pass
    assert log.flush(60), log.stats
    stats = log.stats
    assert stats.logged == stats.stored == 50_002 and stats.spooled == 0 and stats.dropped_total == 0
    assert "mlbench-dispatcher" not in {t.name for t in threading.enumerate()}  # no delivery thread here
    agent = log.agent_pid
    assert agent is not None and agent != os.getpid()
    assert log.close() == 0
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(50_000))
    wait_until(lambda: no_writer_dirs(tmp_path), what="the agent to remove the delivered log")
    wait_until(lambda: not pid_alive(agent) or _zombie(agent), what="the agent to end")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


def trainer(
    run_id: int, address: str, spool: Path, body: str, delivery: str = "process", **env: str
) -> subprocess.Popen[str]:
    """A training script in a process group of its own (as a shell's job would be)."""
    code = textwrap.dedent(f"""
        import mlbench_metrics, sys
        log = mlbench_metrics.init({run_id}, url={address!r}, delivery={delivery!r}, spool_dir={str(spool)!r},
                                   flush_interval=0.2, shutdown_timeout=2, durable=True)
    """) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **env},
    )


def test_sigkill_of_the_trainers_process_group_in_a_burst_loses_nothing(
    fresh_server: ServerHandle, tmp_path: Path
) -> None:
    run = create_run(fresh_server.url)
    proc = trainer(
        run["id"],
        fresh_server.address,
        tmp_path,
        """
        i = 0
        while True:
            log.log("x", i)
            i += 1
            if i % 50_000 == 0:
                print(i, flush=True)   # every record below i has returned from log()
        """,
    )
    assert proc.stdout is not None
    returned = 0
    for _ in range(6):
        returned = int(proc.stdout.readline())
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and all of its group: an OOM kill, a Ctrl-C gone wrong
    proc.communicate()
    # No sync: the agent (in a session of its own) delivers everything, then removes the log.
    wait_until(lambda: no_writer_dirs(tmp_path), timeout=120, what="the agent to deliver and remove the log")
    stored = values_stored(fresh_server.db_path, run["id"])
    assert stored == list(range(len(stored)))  # no gap, no duplicate
    assert len(stored) >= returned


def test_an_agent_killed_mid_run_is_replaced_and_nothing_is_lost(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    log = MetricsLogger(
        run["id"], url=fresh_server.address, delivery="process", spool_dir=tmp_path, flush_interval=0.2, batch_size=500
    )
    first = None
    for i in range(200_000):
        log.log("x", i)
        if i == 100_000:
            wait_until(lambda: log.agent_pid is not None and log.stats.stored > 10_000, what="delivery under way")
            first = log.agent_pid
            assert first is not None
            os.kill(first, signal.SIGKILL)
    wait_until(lambda: log.agent_pid not in (None, first), timeout=30, what="another agent")
    assert log.flush(120), log.stats
    stats = log.stats
    assert stats.logged == stats.stored + stats.spooled + stats.dropped_total == 200_000
    assert stats.stored == 200_000
    log.close()
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(200_000))  # exactly once


def test_an_agent_restarted_after_the_script_changed_directory_finds_a_relative_spool(
    fresh_server: ServerHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # spool_dir="spool" (relative), then the script changes directory: the agent that
    # replaces a dead one must still find the log.
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    run = create_run(fresh_server.url)
    log = MetricsLogger(run["id"], url=fresh_server.address, delivery="process", spool_dir="spool", flush_interval=0.1)
    first = log.agent_pid
    assert first is not None
    monkeypatch.chdir(tmp_path / "elsewhere")
    os.kill(first, signal.SIGKILL)
    for i in range(1000):
        log.log("x", i)
    assert log.flush(60), log.stats
    assert log.agent_pid not in (None, first)
    log.close()
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(1000))
    wait_until(lambda: no_writer_dirs(tmp_path / "spool"), what="the agent to remove the delivered log")


def test_the_agent_does_not_import_modules_from_the_trainers_working_directory(
    fresh_server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A script run from a directory holding a file named like a standard module (its own
    # select.py, say): the agent must start anyway, and run none of the user's code.
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    work = tmp_path / "work"
    work.mkdir()
    (work / "select.py").write_text("raise SystemExit(9)\n")
    monkeypatch.chdir(work)

    def started(log: MetricsLogger) -> None:
        assert log.agent_pid is not None

    deliver_in_process(fresh_server, tmp_path / "s", 1000, started, flush_interval=0.1)
    assert warnings_of(caplog) == []


def test_an_agent_that_cannot_start_leaves_delivery_to_a_thread(
    fresh_server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))

    def from_a_thread(log: MetricsLogger) -> None:
        assert log.agent_pid is None and log.delivery == "process"

    deliver_in_process(fresh_server, tmp_path / "s", 10_000, from_a_thread)
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "delivering from this process" in warnings[0], warnings


@pytest.mark.parametrize("case", ["frozen", "no executable"])
def test_without_a_python_to_run_the_agent_delivery_is_from_a_thread(
    fresh_server: ServerHandle,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    case: str,
) -> None:
    # In a frozen executable (PyInstaller, say) sys.executable is the application:
    # "it -m mlbench_metrics.agent" would start the training again. An embedded
    # interpreter may have no executable at all (None).
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    started = tmp_path / "started"
    app = tmp_path / "app"
    app.write_text(f"#!/bin/sh\ntouch {started}\nexit 7\n")
    app.chmod(0o755)
    if case == "frozen":
        monkeypatch.setattr(sys, "frozen", True, raising=False)
        monkeypatch.setattr(sys, "executable", str(app))
    else:
        monkeypatch.setattr(sys, "executable", None)
    deliver_in_process(fresh_server, tmp_path / "s", 1000, flush_interval=0.1)
    assert not started.exists()
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "delivering from this process" in warnings[0], warnings


def test_an_agent_that_dies_at_start_three_times_leaves_delivery_to_a_thread(
    fresh_server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\nexit 7\n")
    failing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(failing))
    deliver_in_process(fresh_server, tmp_path / "s", 10_000, flush_interval=0.1)
    warnings = warnings_of(caplog)
    assert len(warnings) == 1 and "3 agents ended before they were ready" in warnings[0], warnings


@pytest.mark.parametrize("delivery", ["thread", "process"])
def test_a_restarted_script_delivers_what_its_crashed_attempt_left(
    fresh_server: ServerHandle, tmp_path: Path, delivery: str
) -> None:
    # The first attempt logs while the server cannot be reached, and is killed (its agent
    # gives up after a second). The second attempt (its agent, or a thread in it) adopts
    # the leftovers: no sync.
    run = create_run(fresh_server.url)
    script, reachable = gated(fresh_server.url)
    with ScriptedServer(script) as proxy:
        proc = trainer(
            run["id"],
            proxy.address,
            tmp_path,
            """
            for i in range(20_000):
                log.log("x", i)
            print("logged", flush=True)
            import time; time.sleep(600)
            """,
            delivery,
            MLBENCH_METRICS_AGENT_LINGER="1",
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "logged\n"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        (left,) = [p for p in tmp_path.glob("run-*/*") if p.is_dir()]
        if delivery == "process":
            wait_until(
                lambda: "gives up" in (left / "agent.log").read_text() and not _locked(left / "agent.lock"),
                what="the first agent to give up",
            )
        assert values_stored(fresh_server.db_path, run["id"]) == []
        reachable.set()
        # The second attempt: the same run, server and spool root.
        log = MetricsLogger(run["id"], url=proxy.address, delivery=delivery, spool_dir=tmp_path)
        for i in range(20_000, 20_100):
            log.log("x", i)
        wait_until(lambda: not left.exists(), what="the leftovers to be delivered")
        assert log.close() == 0
        wait_until(lambda: no_writer_dirs(tmp_path), what="the new log to be delivered")
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(20_100))


def _locked(path: Path) -> bool:
    fd = try_lock(path)
    if fd is None:
        return True
    os.close(fd)
    return False


def gated(target: str) -> tuple[Callable[[Seen, int], Any], threading.Event]:
    """A proxy's script that resets connections until the event is set, then forwards."""
    reachable = threading.Event()

    def script(seen: Seen, index: int) -> Any:
        return forward(target, seen) if reachable.is_set() else RESET

    return script, reachable


def test_close_returns_within_its_timeout_and_the_agent_delivers_after(
    fresh_server: ServerHandle, tmp_path: Path
) -> None:
    # A server that cannot be reached at first: close() stops waiting at its timeout, and
    # the agent goes on delivering once the server answers.
    run = create_run(fresh_server.url)
    script, reachable = gated(fresh_server.url)
    with ScriptedServer(script) as proxy:
        log = MetricsLogger(run["id"], url=proxy.address, delivery="process", spool_dir=tmp_path, shutdown_timeout=1)
        for i in range(1000):
            log.log("x", i)
        started = time.monotonic()
        left = log.close()
        assert time.monotonic() - started < 1.5
        stats = log.stats
        assert left == 1000 and stats.spooled == 1000 and stats.logged == stats.stored + stats.spooled
        reachable.set()
        wait_until(lambda: no_writer_dirs(tmp_path), what="the agent to deliver after close")
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(1000))


def test_records_the_server_refuses_are_counted_and_flush_says_so(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    refuse = threading.Event()

    def answer(seen: Seen, index: int) -> Any:
        if refuse.is_set() and seen.method == "POST":
            return http_response(400, '{"message": "no"}')
        return forward(fresh_server.url, seen)

    with ScriptedServer(answer) as proxy:
        log = MetricsLogger(run["id"], url=proxy.address, delivery="process", spool_dir=tmp_path, batch_size=100)
        for i in range(500):
            log.log("x", i)
        assert log.flush(60)
        refuse.set()
        for i in range(500, 800):
            log.log("x", i)
        assert not log.flush(60)  # done, but not stored: said
        stats = log.stats
        assert stats.stored == 500 and stats.dropped == {"rejected": 300} and stats.spooled == 0
        assert stats.logged == stats.stored + stats.spooled + stats.dropped_total
        refuse.clear()
        log.log("x", 800)
        assert log.flush(60)  # the next flush covers only what came after
        log.close()
    assert values_stored(fresh_server.db_path, run["id"]) == [*range(500), 800]


def test_why_records_were_dropped_is_said_in_the_trainer_when_it_closes_at_once(
    fresh_server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A wrong token: every record is refused. The script ends before the watch would
    # repeat the agent's warnings: close() must repeat them, as thread delivery says them.
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    run = create_run(fresh_server.url)

    def answer(seen: Seen, index: int) -> Any:
        return http_response(401, '{"message": "missing or wrong bearer token"}')

    with ScriptedServer(answer) as proxy:
        log = MetricsLogger(run["id"], url=proxy.address, delivery="process", spool_dir=tmp_path, flush_interval=60)
        for i in range(100):
            log.log("x", i)
        assert log.close(60) == 100
        stats = log.stats
    assert stats.dropped == {"rejected": 100}
    warnings = [r.getMessage() for r in caplog.records]
    assert any("401" in w and "from the delivery agent" in w for w in warnings), warnings
    assert len(warnings) == len(set(warnings)), warnings
