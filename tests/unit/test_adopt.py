"""Which writer directories a logger of the same run adopts: real directories, real locks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlbench_metrics.agent.adopt import orphans

ENDPOINT = "http://127.0.0.1:1/api/"


def writer_dir(run_dir: Path, name: str, endpoint: str = ENDPOINT) -> Path:
    path = run_dir / name
    path.mkdir(parents=True)
    (path / "meta.json").write_text(json.dumps({"run_id": 1, "writer": name, "endpoint": endpoint}))
    (path / "owner.lock").touch()
    return path


def test_only_this_users_directories_for_the_same_server_are_adopted(tmp_path: Path) -> None:
    # In a spool root others can write (a team's shared scratch directory), a directory
    # another user left (or planted) must not be sent with this user's token.
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    run_dir = tmp_path / "run-1"
    own = writer_dir(run_dir, "own")
    mine = writer_dir(run_dir, "mine")
    writer_dir(run_dir, "elsewhere", endpoint="http://127.0.0.1:2/api/")
    theirs = writer_dir(run_dir, "theirs")
    for p in [theirs, *theirs.iterdir()]:
        os.chown(p, 65534, 65534)
    assert orphans(own, ENDPOINT) == [mine]


def test_a_damaged_meta_json_is_said_when_it_is_met(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Before, adoption passed it by in silence and only the next `sync` reported it.
    run_dir = tmp_path / "run-1"
    own = writer_dir(run_dir, "own")
    damaged = writer_dir(run_dir, "damaged")
    (damaged / "meta.json").write_text('{"run_id": 1, "endp')
    creating = run_dir / "creating"  # a process making its directory: no lock taken yet
    creating.mkdir()
    with caplog.at_level("WARNING", "mlbench_metrics"):
        assert orphans(own, ENDPOINT) == []
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and said[0].startswith(f"mlbench-metrics: {damaged}, left by an earlier process")
    assert f"{damaged / 'meta.json'} is damaged" in said[0] and f"mlbench-metrics sync {damaged}" in said[0]
