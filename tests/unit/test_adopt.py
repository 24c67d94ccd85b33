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
