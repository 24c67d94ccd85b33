"""The delivery agent as its trainer watches it: stopped, replaced; started, on a sane path.

Before, a stopped agent (SIGSTOP) was never noticed: it is alive, so it was never
replaced; the trainer exited without a word with 14,000 of 20,000 records undelivered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import pytest

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import ServerHandle

from helpers import create_run, values_stored, wait_until


def with_agent(server: ServerHandle, spool: Path, caplog: pytest.LogCaptureFixture) -> tuple[MetricsLogger, int, int]:
    """A logger delivering through an agent process, for a new run: (logger, run, agent's pid)."""
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    run = create_run(server.url)
    log = MetricsLogger(run["id"], url=server.address, delivery="process", spool_dir=spool, flush_interval=0.1)
    assert log.agent_pid is not None
    return log, run["id"], log.agent_pid


def test_a_stopped_agent_is_replaced_and_nothing_is_lost(
    fresh_server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log, run_id, first = with_agent(fresh_server, tmp_path, caplog)
    try:
        for i in range(1000):
            log.log("x", i)
        assert log.flush(60), log.stats
        os.kill(first, signal.SIGSTOP)
        for i in range(1000, 20_000):
            log.log("x", i)
        wait_until(lambda: log.agent_pid not in (None, first), timeout=60, what="another agent")
        assert log.flush(120), log.stats
    finally:
        with contextlib.suppress(ProcessLookupError):  # it was killed when it was replaced
            os.kill(first, signal.SIGCONT)
        log.close()
    assert values_stored(fresh_server.db_path, run_id) == list(range(20_000))  # exactly once
    said = [r.getMessage() for r in caplog.records]
    assert any(f"the delivery agent (pid {first}) has been stopped" in s for s in said), said


def test_closing_while_the_agent_is_stopped_says_where_the_records_wait(
    fresh_server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log, run_id, agent = with_agent(fresh_server, tmp_path, caplog)
    assert log.flush(60)
    os.kill(agent, signal.SIGSTOP)
    try:
        for i in range(2000):
            log.log("x", i)
        log.close(timeout=1.0)  # shorter than the agent may stay stopped before it is replaced
        said = [r.getMessage() for r in caplog.records]
        assert any(f"the delivery agent (pid {agent}) is stopped and 2000 records wait in" in s for s in said), said
        assert any(f"kill -CONT {agent}" in s for s in said)
    finally:
        os.kill(agent, signal.SIGCONT)  # it resumes and delivers what waits
    wait_until(lambda: values_stored(fresh_server.db_path, run_id) == list(range(2000)), timeout=60, what="delivery")


def test_the_agent_keeps_the_standard_library_first_on_its_path(
    fresh_server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The package installed beside a file named like a standard module (a select.py in a
    # checkout's root): the agent must import the standard one. Before, the package's
    # root went first on its sys.path (PYTHONPATH), and the agent never started.
    import mlbench_metrics
    from mlbench_metrics.agent import link

    root = tmp_path / "checkout"
    root.mkdir()
    (root / "mlbench_metrics").symlink_to(Path(mlbench_metrics.__file__).parent)
    (root / "select.py").write_text("raise SystemExit(9)\n")
    monkeypatch.setattr(link, "_PACKAGE_ROOT", str(root))
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    run = create_run(fresh_server.url)
    with MetricsLogger(
        run["id"], url=fresh_server.address, delivery="process", spool_dir=tmp_path / "s", flush_interval=0.1
    ) as log:
        for i in range(100):
            log.log("x", i)
        assert log.flush(60), log.stats
        assert log.agent_pid is not None
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(100))
    assert not [r for r in caplog.records if "cannot run" in r.getMessage()]
