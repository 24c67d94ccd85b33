"""A database written before the binary chunk format reads exactly as it did, and takes new points.

``tests/data/chunks_v1.db`` was written by the code of commit a8fe294 (JSON text chunks),
through its API, and ``chunks_v1.answers.json`` holds what that code answered when reading
it; ``tests/data/make_chunks_v1.py`` made both and says how to make them again.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve

DATA = Path(__file__).parent.parent / "data"
RECORDED: dict[str, Any] = json.loads((DATA / "chunks_v1.answers.json").read_text())
IDS: dict[str, Any] = RECORDED["ids"]


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    """A copy of the old database (the server turns on WAL mode: never open the fixture itself)."""
    path = tmp_path / "old.db"
    shutil.copy(DATA / "chunks_v1.db", path)
    return path


@pytest.fixture
def old_server(old_db: Path) -> Iterator[ServerHandle]:
    handle = serve(db_path=str(old_db))
    try:
        yield handle
    finally:
        handle.stop()


def _get(server: ServerHandle, path: str, **params: str) -> requests.Response:
    r = requests.get(server.url + path, params=params, headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200, r.text
    return r


@pytest.mark.parametrize("recorded", RECORDED["answers"], ids=lambda a: f"{a['path']}?{a['params']}")
def test_every_read_answers_what_the_old_code_answered(old_server: ServerHandle, recorded: dict[str, Any]) -> None:
    assert _get(old_server, recorded["path"], **recorded["params"]).text == recorded["body"]


def test_the_zip_holds_what_it_held(old_server: ServerHandle) -> None:
    body = _get(old_server, f"/api/metrics/{IDS['run']}/", metric_type="run", format="zip").content
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert {name: zf.read(name).decode() for name in zf.namelist()} == RECORDED["zip"]


def test_new_points_join_the_old_series_in_date_order(old_server: ServerHandle) -> None:
    run, t0 = IDS["run"], IDS["t0"]
    before = _get(old_server, f"/api/metrics/{run}/", metric_type="run", metric_filter="acc").json()["acc"]
    assert len(before) == 29
    # One point dated inside the old points (the sorted path mixes both formats), one after them all.
    batch = {"name": ["acc", "acc"], "value": [0.25, 0.75], "date_us": [t0 + 2500, t0 + 60_000], "metadata": "new"}
    r = requests.post(f"{old_server.url}/api/metrics/batch/", json={"run_id": run, "columns": batch})
    assert r.status_code in (200, 201), r.text
    after = _get(old_server, f"/api/metrics/{run}/", metric_type="run", metric_filter="acc").json()["acc"]
    assert len(after) == len(before) + 2
    assert after[-1] == {"date": "2100-01-01T00:00:00.060000Z", "value": "0.75", "cumulative": False}
    inserted = after.index({"date": "2100-01-01T00:00:00.002500Z", "value": "0.25", "cumulative": False})
    assert after[:inserted] + after[inserted + 1 : -1] == before

    points = _get(old_server, f"/api/runs/{run}/points/", name="acc").json()["series"][0]
    assert points["count"] == len(after) and points["points"]["metadata"][-1] == "new"
    dates = points["points"]["date_us"]
    assert dates == sorted(dates) and dates.index(t0 + 2500) == inserted
    assert points["points"]["value"][-1] == 0.75 and points["points"]["date_us"][-1] == t0 + 60_000
    stats = _get(old_server, "/api/runs/stats/").json()["runs"][str(run)]
    assert stats["points"] == json.loads(_recorded("/api/runs/stats/"))["runs"][str(run)]["points"] + 2


def test_deleting_an_old_run_removes_its_old_and_new_chunks(old_server: ServerHandle, old_db: Path) -> None:
    run = IDS["run"]
    r = requests.post(
        f"{old_server.url}/api/metrics/batch/",
        json={"run_id": run, "columns": {"name": ["acc"], "value": [1.0], "date_us": [IDS["t0"]]}},
    )
    assert r.status_code in (200, 201), r.text
    assert requests.delete(f"{old_server.url}/api/runs/{run}/").status_code == 204
    assert str(run) not in _get(old_server, "/api/runs/stats/").json()["runs"]
    other = _get(old_server, f"/api/runs/{IDS['other']}/points/").text
    assert other == _recorded(f"/api/runs/{IDS['other']}/points/")
    conn = sqlite3.connect(old_db)
    try:
        orphans = conn.execute("SELECT COUNT(*) FROM chunk_bodies WHERE id NOT IN (SELECT id FROM chunks)").fetchone()
        assert orphans == (0,)
    finally:
        conn.close()


def _recorded(path: str) -> str:
    return str(next(a["body"] for a in RECORDED["answers"] if a["path"] == path and not a["params"]))
