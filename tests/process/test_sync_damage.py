"""``sync`` never deletes what it did not deliver: damaged files are reported in one line
each (what, which file, how many records), kept, and the exit status is 1, while the
other directories are still delivered."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import ServerHandle
from mlbench_metrics.server.store import Store

from helpers import closed_port, create_run


def sync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlbench_metrics.cli", "sync", *args], capture_output=True, text=True, timeout=300
    )


def count(db_path: str, run_id: int) -> int:
    store = Store(db_path)
    try:
        return store.count_metrics(run_id)
    finally:
        store.close()


def leave_undelivered(root: Path, run_id: int, records: int, *, durable: bool) -> Path:
    """A writer directory holding ``records`` undelivered records, as a dead process leaves it."""
    log = MetricsLogger(run_id, url=closed_port(), durable=durable, spool_dir=root, batch_size=100)
    for i in range(records):
        log.log("x", i)
    assert log.close(timeout=1.0) == records  # 0.3 s fell short once on a loaded machine
    writer = log.spool_dir
    assert writer is not None and writer.exists()
    return writer


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def damage_last_dictionary_entry(writer: Path) -> str:
    data = (writer / "dict.log").read_bytes()
    flip(writer / "dict.log", len(data) - 3)
    return "dict.log"


def damage_name_entry(writer: Path) -> str:
    data = (writer / "dict.log").read_bytes()
    flip(writer / "dict.log", data.index(b'"x"') + 1)
    return "dict.log"


def truncate_segment(writer: Path) -> str:
    segment = sorted(writer.glob("seg-*.bin"))[0]
    segment.write_bytes(segment.read_bytes()[: 48 * 1500 + 20])
    return segment.name


def corrupt_meta(writer: Path) -> str:
    (writer / "meta.json").write_text('{"run_id": 1, "endpo')
    return "meta.json"


def non_utf8_acks(writer: Path) -> str:
    spool_file = sorted(writer.glob("spool-*.log"))[0]
    spool_file.with_suffix(".acks").write_bytes(b"\xff\xfe not text\n")
    return spool_file.with_suffix(".acks").name


@pytest.mark.parametrize(
    ("durable", "damage"),
    [
        (True, damage_last_dictionary_entry),
        (True, damage_name_entry),
        (True, truncate_segment),
        (True, corrupt_meta),
        (False, corrupt_meta),
        (False, non_utf8_acks),
    ],
    ids=["dictionary", "name-entry", "truncated-segment", "meta-durable", "meta-spool", "acks"],
)
def test_damage_is_reported_kept_and_the_rest_delivered(
    fresh_server: ServerHandle, tmp_path: Path, durable: bool, damage: Callable[[Path], str]
) -> None:
    damaged_run, healthy_run = create_run(fresh_server.url), create_run(fresh_server.url)
    damaged = leave_undelivered(tmp_path, damaged_run["id"], 4000, durable=durable)
    leave_undelivered(tmp_path, healthy_run["id"], 300, durable=False)
    what = damage(damaged)
    before = sorted(p.name for p in damaged.iterdir())
    result = sync(str(tmp_path), "--url", fresh_server.address)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if what in line]
    assert lines, result.stdout + result.stderr
    assert damaged.exists() and sorted(p.name for p in damaged.iterdir()) == before  # nothing deleted
    assert count(fresh_server.db_path, healthy_run["id"]) == 300  # the other directory was delivered


def test_a_torn_batch_in_the_spool_reports_the_records_it_lost(fresh_server: ServerHandle, tmp_path: Path) -> None:
    run = create_run(fresh_server.url)
    writer = leave_undelivered(tmp_path, run["id"], 1000, durable=False)
    spool_file = sorted(writer.glob("spool-*.log"))[-1]
    data = spool_file.read_bytes()
    spool_file.write_bytes(data[: len(data) - 200])  # cut inside the last batch of 100
    result = sync(str(tmp_path), "--url", fresh_server.address)
    assert result.returncode == 1
    assert "900 delivered" in result.stdout
    assert "100 records" in result.stdout + result.stderr, result.stdout + result.stderr
    assert count(fresh_server.db_path, run["id"]) == 900
    assert json.loads((writer / "meta.json").read_text())["run_id"] == run["id"]  # kept for a look
