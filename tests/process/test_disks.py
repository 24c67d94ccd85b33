"""Disks that fill up or cannot be written: never a crash, never an exception from
``log()``, one warning, and every record stored or counted. Real (small) filesystems."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from fakes import ScriptedServer, Seen, forward
from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import ServerHandle, serve

from helpers import closed_port, create_run


def mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip() or result.returncode}")


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A tmpfs of ``request.param`` (e.g. "2m"), unmounted after the test."""
    path = tmp_path / "disk"
    mount_tmpfs(path, f"size={request.param}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.parametrize("delivery", ["thread", "process"])
@pytest.mark.parametrize(("small_disk", "records"), [("2m", 100_000), ("20m", 500_000)], indirect=["small_disk"])
def test_a_full_disk_in_durable_mode_is_never_a_crash(
    fresh_server: ServerHandle, small_disk: Path, records: int, delivery: str
) -> None:
    # Was: the training process died of SIGBUS (signal 7) writing into a sparse mapping.
    # 2 MB holds no 16 MiB segment; 20 MB holds one, and the gate keeps the server from
    # taking records (and so freeing the first segment) until everything is logged. With
    # process delivery, the agent delivers the log and the training process what followed.
    run = create_run(fresh_server.url)
    gate = threading.Event()

    def gated(seen: Seen, index: int) -> Any:
        if seen.method == "POST":
            gate.wait(120)
        return forward(fresh_server.url, seen)

    code = textwrap.dedent(f"""
        import json, sys, mlbench_metrics
        log = mlbench_metrics.init({run["id"]}, url=sys.argv[1], durable=True, batch_size=10_000,
                                   spool_dir={str(small_disk)!r}, max_buffer=1_000_000, delivery={delivery!r})
        for i in range({records}):
            log.log("x", i)
        print("logged", flush=True)
        assert log.flush(120), log.stats
        s = log.stats
        print(json.dumps({{"logged": s.logged, "stored": s.stored, "dropped": s.dropped}}), flush=True)
    """)
    with ScriptedServer(gated) as proxy:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, proxy.address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        gate.set()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and first == "logged\n", err[-2000:]
    stats = json.loads(out.splitlines()[-1])
    assert stats == {"logged": records, "stored": records, "dropped": {}}
    warnings = [line for line in err.splitlines() if "mlbench-metrics" in line]
    assert len(warnings) == 1 and "memory" in warnings[0], err[-2000:]
    assert fresh_server.store.count_metrics(run["id"]) == records


def read_only_dir(tmp_path: Path) -> Path:
    path = tmp_path / "ro"
    mount_tmpfs(path, "ro,size=1m")
    return path / "spool"


def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("not a directory")
    return tmp_path / "a-file" / "spool"


@pytest.mark.parametrize("mode", ["durable", "spool", "process"])
@pytest.mark.parametrize("where", [read_only_dir, under_a_file], ids=["read-only", "not-a-directory"])
def test_an_unwritable_spool_directory_degrades_to_memory(
    fresh_server: ServerHandle, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, where: object
) -> None:
    # Was: every log() raised SpoolError in durable mode.
    caplog.set_level(logging.WARNING, "mlbench_metrics")
    spool_dir = where(tmp_path)  # type: ignore[operator]
    durable, delivery = mode == "durable", "process" if mode == "process" else "thread"
    try:
        run = create_run(fresh_server.url)
        with MetricsLogger(
            run["id"], url=fresh_server.address, durable=durable, spool_dir=spool_dir, delivery=delivery
        ) as log:
            for i in range(5000):
                log.log("x", i)
            assert log.flush(60)
        assert fresh_server.store.count_metrics(run["id"]) == 5000
        down = MetricsLogger(
            run["id"], url=closed_port(), durable=durable, spool_dir=spool_dir, batch_size=100, delivery=delivery
        )
        for i in range(1000):
            down.log("x", i)
        assert down.close(timeout=0.5) == 1000
        stats = down.stats
        assert stats.logged == stats.stored + stats.spooled + stats.dropped_total == 1000
        mentions = [r for r in caplog.records if str(spool_dir) in r.getMessage()]
        assert len(mentions) == 2, [r.getMessage() for r in mentions]  # one per logger
    finally:
        if os.path.ismount(tmp_path / "ro"):
            subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)


@pytest.mark.parametrize("small_disk", ["700k"], indirect=True)
def test_a_full_disk_under_the_database_is_said_once_and_reads_go_on(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Was: every write answered "the database is busy (database or disk is full); try again"
    # and logged one warning per request (391 lines for 400 batches).
    caplog.set_level(logging.WARNING, logger="mlbench_metrics.server")
    with serve(db_path=str(small_disk / "metrics.db")) as server:
        run = create_run(server.url)
        refused = []
        for i in range(200):
            metrics = [
                {"name": f"m{j % 7}", "value": j, "date": "2026-01-01T00:00:00Z", "metadata": "x" * 200}
                for j in range(200)
            ]
            body = {"batch_id": f"b{i}", "run_id": run["id"], "metrics": metrics}
            r = requests.post(f"{server.url}/api/metrics/batch/", json=body)
            if r.status_code != 201:
                refused.append(r)
            if len(refused) == 20:
                break
        assert len(refused) == 20, "the disk never filled"
        assert {r.status_code for r in refused} == {503}  # clients retry, then spool: nothing is lost
        assert "disk holding the database is full" in refused[0].json()["message"]
        full = [rec for rec in caplog.records if "full" in rec.getMessage()]
        assert len(full) == 1, [rec.getMessage() for rec in full]
        assert requests.get(f"{server.url}/api/runs/{run['id']}/series/").status_code == 200
