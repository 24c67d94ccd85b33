"""``sync`` from the command line: directories side by side, what it skips, what ``--to`` does
with ordinary batches.

Before: sync delivered one batch of one directory at a time (70 records/s against the
dashboard where the ranks had delivered 164/s live); it skipped a directory whose process
was stopped (SIGSTOP) with exit 0 while 14,000 records waited there; ``sync --to`` on a
spool of ordinary batches said "no raw copies" and exited 0 while 4,534 records waited.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import ScriptedServer, Together
from mlbench_metrics.server import ServerHandle, serve

from helpers import create_run, spool_batches, values_stored


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlbench_metrics.cli", *args], capture_output=True, text=True, timeout=300
    )


def endpoint(server: ServerHandle) -> str:
    return f"{server.url}/api/"


def test_sync_delivers_several_directories_at_once(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    for rank in range(2):
        spool_batches(tmp_path, run["id"], endpoint(fresh_server), rank * 1000, batches=6)
    together = Together(6, fresh_server.url)  # more than one directory keeps in flight
    with ScriptedServer(together) as proxy:
        result = cli("sync", str(tmp_path), "--url", proxy.address)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not together.alone, "the two directories were not delivered side by side"
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(30)) + list(range(1000, 1030))


HOLDER = textwrap.dedent(
    """
    import sys
    from mlbench_metrics.records import MetricBatch
    from mlbench_metrics.spool import BatchSpool, SpoolDir
    directory = SpoolDir(sys.argv[1], 7, {"endpoint": sys.argv[2]})
    spool = BatchSpool(directory, 1 << 30)
    spool.put([MetricBatch(["x"] * 4, [1, 2, 3, 4], [1] * 4, [""] * 4, [False] * 4, batch_id="held")])
    print(directory.path, flush=True)
    sys.stdin.read()  # holds the directory until told
    """
)


@pytest.fixture
def holder(tmp_path: Path, server: ServerHandle) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path), endpoint(server)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    path = Path(process.stdout.readline().strip())
    try:
        yield process, path
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(timeout=60)


def test_a_directory_held_by_a_stopped_process_is_not_skipped_silently(
    holder: tuple[subprocess.Popen[str], Path], server: ServerHandle
) -> None:
    process, path = holder
    running = cli("sync", str(path))
    assert running.returncode == 1, running.stdout + running.stderr
    assert f"4 records wait in it, and its writer (pid {process.pid}) holds it" in running.stderr
    os.kill(process.pid, signal.SIGSTOP)
    stopped = cli("sync", str(path))
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert f"its writer (pid {process.pid}) is stopped and 4 records wait in it" in stopped.stderr
    assert f"kill -CONT {process.pid}" in stopped.stderr


def test_sync_to_with_ordinary_batches_sends_them_to_their_own_server_or_says_they_wait(
    fresh_server: ServerHandle, tmp_path: Path
) -> None:
    run = create_run(fresh_server.url)
    path = spool_batches(tmp_path, run["id"], endpoint(fresh_server), 0, batches=3)
    with serve() as elsewhere:
        other = cli("sync", str(path), "--to", elsewhere.address)
    assert other.returncode == 1, other.stdout + other.stderr
    assert "15 records wait in it for the run's own server" in other.stderr
    assert f"mlbench-metrics sync {path}" in other.stderr
    assert values_stored(fresh_server.db_path, run["id"]) == []
    own = cli("sync", str(path), "--to", fresh_server.address)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "15 delivered" in own.stdout
    assert values_stored(fresh_server.db_path, run["id"]) == list(range(15))
    assert not path.exists()
