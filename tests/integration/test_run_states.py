"""Run states on the server: writers report alive and ended, ``crashed`` is derived from the database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve

from helpers import DASHBOARD_RUN_KEYS, create_run, wait_until

BATCH = {"name": ["loss"], "value": [0.5], "date_us": [1_700_000_000_000_000]}


@pytest.fixture
def quick() -> Iterator[ServerHandle]:
    """A server that takes a writer silent for 1 s for dead."""
    handle = serve(writer_timeout=1.0)
    try:
        yield handle
    finally:
        handle.stop()


def report(server: ServerHandle, run_id: int, writer: str, state: str = "open", rank: int | None = None) -> Any:
    r = requests.put(f"{server.url}/api/runs/{run_id}/writers/{writer}/", json={"state": state, "rank": rank})
    assert r.status_code == 200, r.text
    return r.json()


def state(server: ServerHandle, run_id: int) -> str:
    return str(requests.get(f"{server.url}/api/runs/{run_id}/").json()["state"])


def post_batch(server: ServerHandle, run_id: int, **extra: Any) -> requests.Response:
    return requests.post(f"{server.url}/api/metrics/batch/", json={"run_id": run_id, "columns": BATCH, **extra})


def test_a_writer_starts_the_run_and_its_close_finishes_it(server: ServerHandle) -> None:
    run = create_run(server.url)
    assert run["state"] == "initialized" and run["started_at"] is None and run["last_seen_at"] is None
    answer = report(server, run["id"], "w1")
    assert answer["run"]["state"] == "started" and answer["run"]["started_at"] is not None
    assert answer["conflict"] is None and answer["writer"]["alive"] is True
    assert answer["heartbeat_s"] == 15.0 and answer["timeout_s"] == 60.0
    closed = report(server, run["id"], "w1", "closed")["run"]
    assert closed["state"] == "finished" and closed["finished_at"] is not None


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(  # the last writer closing finishes; a late rank runs it again; a failure stays
            [
                ("rank-0", "open", 0, "started"),
                ("rank-1", "open", 1, "started"),
                ("rank-0", "closed", 0, "started"),
                ("rank-1", "closed", 1, "finished"),
                ("rank-2", "open", 2, "started"),
                ("rank-2", "failed", 2, "failed"),
                ("rank-3", "open", 3, "failed"),
                ("rank-3", "closed", 3, "failed"),
            ],
            id="several-writers",
        ),
        pytest.param(
            [
                ("a", "open", 0, "started"),
                ("b", "open", 1, "started"),
                ("b", "failed", 1, "failed"),
                ("a", "closed", 0, "failed"),
            ],
            id="one-fails",
        ),
    ],
)
def test_the_run_state_follows_its_writers(server: ServerHandle, steps: list[tuple[str, str, int, str]]) -> None:
    run = create_run(server.url)
    for writer, said, rank, expected in steps:
        assert report(server, run["id"], writer, said, rank=rank)["run"]["state"] == expected, (writer, said)


def test_a_silent_writer_makes_the_run_crashed_and_a_late_batch_brings_it_back(quick: ServerHandle) -> None:
    run = create_run(quick.url)
    assert post_batch(quick, run["id"], writer={"id": "w1", "rank": None}).status_code == 201
    assert state(quick, run["id"]) == "started"
    wait_until(lambda: state(quick, run["id"]) == "crashed", what="the run to read crashed")
    listed = {r["id"]: r for r in requests.get(f"{quick.url}/api/runs/").json()}
    assert listed[run["id"]]["state"] == "crashed"
    assert requests.get(f"{quick.url}/api/runs/{run['id']}/writers/").json()["writers"][0]["alive"] is False
    assert post_batch(quick, run["id"], writer={"id": "w1", "rank": None}).status_code == 201
    assert state(quick, run["id"]) == "started"


def test_a_closed_writer_leaves_no_crash_behind(quick: ServerHandle) -> None:
    run = create_run(quick.url)
    report(quick, run["id"], "w1")
    report(quick, run["id"], "w1", "closed")
    other = create_run(quick.url)
    report(quick, other["id"], "w2")
    wait_until(lambda: state(quick, other["id"]) == "crashed", what="the other run to read crashed")
    assert state(quick, run["id"]) == "finished"


def test_the_newer_of_two_writers_without_ranks_is_told_once(server: ServerHandle) -> None:
    run = create_run(server.url)
    assert report(server, run["id"], "first")["conflict"] is None
    second = report(server, run["id"], "second")["conflict"]
    assert second is not None and "first" in second and "rank=" in second
    assert report(server, run["id"], "first")["conflict"] is None  # the older one is not told
    assert report(server, run["id"], "third", rank=0)["conflict"] is None  # distinct ranks: no conflict
    assert "same rank 0" in report(server, run["id"], "fourth", rank=0)["conflict"]


def test_bad_writer_fields_are_refused_and_store_nothing(server: ServerHandle) -> None:
    run = create_run(server.url)
    for writer in ("w1", {"id": 5}, {"id": "has space"}, {"id": "w", "rank": "0"}, {"id": "w", "rank": True}):
        r = post_batch(server, run["id"], writer=writer)
        assert r.status_code == 400, r.text
        assert "writer" in r.json()["message"] or "rank" in r.json()["message"]
    assert requests.get(f"{server.url}/api/runs/stats/").json()["runs"].get(str(run["id"])) is None
    assert state(server, run["id"]) == "initialized"
    bad = requests.put(f"{server.url}/api/runs/{run['id']}/writers/w/", json={"state": "crashed"})
    assert bad.status_code == 400
    assert requests.put(f"{server.url}/api/runs/999999/writers/w/", json={}).status_code == 404


def test_a_batch_without_a_writer_changes_no_state(server: ServerHandle) -> None:
    run = create_run(server.url)
    assert post_batch(server, run["id"]).status_code == 201
    assert state(server, run["id"]) == "initialized"


def test_the_dashboard_shape_without_extensions() -> None:
    with serve(extensions=False) as handle:
        run = create_run(handle.url)
        assert list(run) == DASHBOARD_RUN_KEYS
        assert "writers" not in requests.get(f"{handle.url}/api/").json()["server"]["extensions"]
        assert requests.put(f"{handle.url}/api/runs/{run['id']}/writers/w/", json={}).status_code == 404


def test_an_old_database_takes_writers(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent.parent / "data" / "chunks_v1.db", path)
    with serve(db_path=str(path)) as handle:
        runs = requests.get(f"{handle.url}/api/runs/").json()
        assert runs and all(r["last_seen_at"] is None for r in runs)
        run_id = runs[0]["id"]
        assert report(handle, run_id, "w1")["run"]["last_seen_at"] is not None


def test_a_run_with_a_job_keeps_the_state_its_job_gives(quick: ServerHandle) -> None:
    run = create_run(quick.url)
    quick.store.update_run(run["id"], state="started", job_id=f"local-{run['id']}")
    assert report(quick, run["id"], "w1", "closed")["run"]["state"] == "started"  # the job ends it, by exit code
    report(quick, run["id"], "w2")
    other = create_run(quick.url)
    report(quick, other["id"], "w3")
    wait_until(lambda: state(quick, other["id"]) == "crashed", what="the run without a job to read crashed")
    assert state(quick, run["id"]) == "started"


@pytest.mark.parametrize("pk", ["%C2%B2", "%E2%91%A0", "%C2%BD"])  # "²", "①", "½": str.isdigit's, not int's
@pytest.mark.parametrize(
    ("method", "tail", "body"),
    [
        ("PUT", "writers/w1/", {"state": "open"}),
        ("GET", "writers/", None),
        ("PATCH", "", {"state": "finished"}),
        ("GET", "details/", None),
        ("GET", "config/", None),
        ("GET", "series/", None),
        ("GET", "points/", None),
    ],
)
def test_a_run_id_of_digits_int_refuses_is_not_found_not_a_server_error(
    server: ServerHandle, pk: str, method: str, tail: str, body: Any
) -> None:
    answer = requests.request(method, f"{server.url}/api/runs/{pk}/{tail}", json=body, timeout=30)
    assert answer.status_code == 404, answer.text
