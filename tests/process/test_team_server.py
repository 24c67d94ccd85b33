"""A server for a team: several processes on one PostgreSQL database, and `db copy`.

Real server processes (``serve --workers N``), real PostgreSQL (skipped without one, see
tests/postgres.py), real sockets. Which process gets a connection is the kernel's
choice, so the tests that need "another process" send from many connections at once.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from mlbench_metrics.server import ServerProcess, serve, spawn
from mlbench_metrics.server.store import Store

from helpers import create_run, unique_name, wait_until

DATA = Path(__file__).parent.parent / "data"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlbench_metrics.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def workers_of(server: ServerProcess) -> list[psutil.Process]:
    assert server.pid is not None
    return psutil.Process(server.pid).children()


@pytest.fixture
def team(postgres_url: str) -> Any:
    with spawn(db_path=postgres_url, args=["--workers", "4"]) as server:
        assert len(workers_of(server)) == 4
        yield server


def _batch(run_id: int, batch_id: str, values: list[int]) -> dict[str, Any]:
    """A batch body of metric ``x`` with these values (below a million), dated by them."""
    rows = [{"name": "x", "value": v, "date": f"2026-01-01T00:00:00.{v:06d}Z"} for v in values]
    return {"run_id": run_id, "batch_id": batch_id, "metrics": rows}


def test_a_batch_sent_to_every_process_at_once_is_stored_once(team: ServerProcess) -> None:
    run = create_run(team.url)
    body = _batch(run["id"], "the-one", list(range(500)))

    def send(_: int) -> int:
        with requests.Session() as s:  # a connection of its own: any of the 4 processes may take it
            return s.post(team.url + "/api/metrics/batch/", json=body, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, range(32)))
    assert sorted(codes) == [200] * 31 + [201]
    with closing(Store(team.db_path)) as store:
        assert store.count_metrics(run["id"]) == 500


def test_live_reads_see_what_any_process_stored(team: ServerProcess) -> None:
    run = create_run(team.url)
    cursor = 0
    for i in range(12):
        with requests.Session() as writer:
            writer.post(team.url + "/api/metrics/batch/", json=_batch(run["id"], f"b{i}", [i]), timeout=30)
        with requests.Session() as reader:  # a new connection: perhaps another process
            got = reader.get(f"{team.url}/api/runs/{run['id']}/points/", params={"after": cursor}, timeout=30).json()
        (series,) = got["series"]
        assert series["points"]["value"] == [i]  # what arrived since the last cursor, nothing missed
        cursor = got["cursor"]


def test_a_run_is_started_once_whichever_process_created_it(postgres_url: str, tmp_path: Path) -> None:
    marks = tmp_path / "started.txt"
    command = f"{sys.executable} -c \"open({str(marks)!r}, 'a').write('x')\""
    args = ["--workers", "3", "--exec", "--token", "t0k", "--exec-workdir", str(tmp_path)]
    with spawn(db_path=postgres_url, args=args) as server:
        auth = {"Authorization": "Bearer t0k"}
        with requests.Session() as s:
            s.headers.update(auth)
            runs = [create_run(server.url, session=s, custom_image_command=command) for _ in range(6)]

            def finished() -> bool:
                states = [s.get(f"{server.url}/api/runs/{r['id']}/", timeout=10).json()["state"] for r in runs]
                return all(state == "finished" for state in states)

            wait_until(finished, 120, "every run finished")
    assert marks.read_text() == "x" * 6


def test_a_dying_process_is_replaced_and_sigterm_stops_them_all(team: ServerProcess) -> None:
    first = workers_of(team)
    first[0].kill()
    wait_until(lambda: len(workers_of(team)) == 4 and first[0].pid not in {p.pid for p in workers_of(team)}, 60)
    assert requests.get(team.url + "/readyz", timeout=30).status_code == 200
    everyone = workers_of(team)
    team.stop()
    _, alive = psutil.wait_procs(everyone, timeout=30)
    assert not alive


def test_workers_on_sqlite_are_refused_with_the_reason(tmp_path: Path) -> None:
    done = cli("serve", "--workers", "2", "--port", "0", "--db", str(tmp_path / "m.db"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "mlbench-metrics: error: --workers needs a PostgreSQL database (--db postgresql://...): SQLite takes one "
        "writer at a time, so more processes would only queue on its lock"
    ]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--workers", "0"),
        ("--workers", "-3"),
        ("--db-pool", "0"),
        ("--db-pool-timeout", "-1"),
        ("--db-pool-timeout", "nan"),
    ],
)
def test_a_count_of_processes_or_connections_below_one_is_refused(tmp_path: Path, option: str, value: str) -> None:
    done = cli("serve", option, value, "--port", "0", "--db", str(tmp_path / "m.db"), timeout=60)
    assert done.returncode == 2  # not a server started with one process, or none that waits
    assert f"argument {option}: expected a" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://mlbench@127.0.0.1:1/x?password=querysecret",  # libpq's own parameter
        "postgresql://mlbench:querysecret@127.0.0.1:notaport/x",  # a URL urlsplit cannot read
        "postgresql://mlbench:querysecret@[::1:bad/x",  # one libpq quotes whole in its error
    ],
)
def test_a_database_it_cannot_reach_is_said_in_one_line_without_the_password(url: str) -> None:
    done = cli("serve", "--port", "0", "--db", url)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlbench-metrics: error: "), done.stderr
    assert "querysecret" not in done.stderr + done.stdout


def _answers(url: str, run_id: int) -> dict[str, Any]:
    """What the API answers about a run, without what a copy changes (its id)."""
    run = requests.get(f"{url}/api/runs/{run_id}/", timeout=30).json()
    metrics = requests.get(f"{url}/api/metrics/{run_id}/", params={"metric_type": "run"}, timeout=30).json()
    config = requests.get(f"{url}/api/runs/{run_id}/config/", timeout=30).json()
    points = requests.get(f"{url}/api/runs/{run_id}/points/", timeout=30).json()["series"]
    run.pop("id")
    return {"run": run, "metrics": metrics, "config": config, "points": points}


def test_db_copy_moves_every_run_once_and_resumes_after_a_kill(postgres_url: str, tmp_path: Path) -> None:
    source = tmp_path / "laptop.db"
    shutil.copy(DATA / "chunks_v1.db", source)  # old JSON chunks, re-encoded on the way
    with serve(db_path=str(source)) as laptop:
        for i in range(12):
            run = create_run(laptop.url, name=unique_name("copy"))
            n = 20_000
            body = _batch(run["id"], f"copy-{i}", list(range(n)))
            requests.post(laptop.url + "/api/metrics/batch/", json=body, timeout=60).raise_for_status()
            requests.put(f"{laptop.url}/api/runs/{run['id']}/config/", json={"config": {"lr": i}}, timeout=30)
        before = {r["id"]: _answers(laptop.url, r["id"]) for r in requests.get(laptop.url + "/api/runs/").json()}
    # Killed once it has copied a run: what committed stays, the rest is copied by the rerun.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlbench_metrics.cli", "db", "copy", str(source), postgres_url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    proc.kill()
    proc.wait()
    assert first.startswith("run ")
    done = cli("db", "copy", str(source), postgres_url)
    assert done.returncode == 0, done.stderr
    again = cli("db", "copy", str(source), postgres_url)
    assert again.returncode == 0 and "copied 0 run(s)" in again.stdout, again.stdout
    with serve(db_path=postgres_url) as team:
        runs = requests.get(team.url + "/api/runs/", timeout=30).json()
        assert len(runs) == len(before)  # each exactly once
        with closing(Store(postgres_url)) as store, store.db.read() as conn:
            mapping = dict(conn.execute("SELECT source_run_id, run_id FROM copied_runs WHERE source_run_id > 0"))
        for old_id, answers in before.items():
            assert _answers(team.url, mapping[old_id]) == answers


def _readable(db: Path, run_id: int) -> bool:
    """Whether SQLite can read every row of the run's chunks (bodies included)."""
    query = "SELECT chunks.data, b.body FROM chunks LEFT JOIN chunk_bodies b ON b.id = chunks.id WHERE owner = ?"
    with closing(sqlite3.connect(db)) as conn:
        try:
            conn.execute(query, (run_id,)).fetchall()
        except sqlite3.DatabaseError:
            return False
    return True


def test_db_copy_of_a_damaged_file_copies_every_run_it_can_read_and_names_the_others(
    postgres_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "laptop.db"
    with serve(db_path=str(source)) as laptop:
        for i in range(6):
            run = create_run(laptop.url, name=f"run{i}")
            body = _batch(run["id"], f"damage-{i}", list(range(20_000)))
            requests.post(laptop.url + "/api/metrics/batch/", json=body, timeout=60).raise_for_status()
        before = {r["id"]: _answers(laptop.url, r["id"]) for r in requests.get(laptop.url + "/api/runs/").json()}
    with closing(sqlite3.connect(source)) as conn:  # a page of one body's overflow chain, damaged
        overflow = [p for (p,) in conn.execute("SELECT pageno FROM dbstat WHERE pagetype = 'overflow' ORDER BY pageno")]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    with open(source, "r+b") as f:
        assert overflow  # 20,000 points a run: bodies longer than a page
        f.seek((overflow[len(overflow) // 2] - 1) * page_size)
        f.write(b"\xff\xff\xff\xff")  # the next page of the chain: beyond the file
    unreadable = [run_id for run_id in before if not _readable(source, run_id)]
    assert unreadable and len(unreadable) < len(before)  # the damage hit some runs, not all
    for _ in range(2):  # running it again meets the same damage and says the same
        done = cli("db", "copy", str(source), postgres_url)
        assert done.returncode == 1
        named = ", ".join(f"run {i} (run{i - 1})" for i in unreadable)
        assert done.stderr.strip().splitlines()[-1] == (
            f"mlbench-metrics: error: {source} is damaged: {len(unreadable)} not copied ({named})"
        )
    with serve(db_path=postgres_url) as team, closing(Store(postgres_url)) as store:
        with store.db.read() as conn:
            mapping = dict(conn.execute("SELECT source_run_id, run_id FROM copied_runs WHERE source_run_id > 0"))
        assert sorted(mapping) == sorted(set(before) - set(unreadable))
        for old_id in mapping:
            assert _answers(team.url, mapping[old_id]) == before[old_id]


def test_db_copy_says_which_runs_are_still_going(postgres_url: str, tmp_path: Path) -> None:
    source = tmp_path / "laptop.db"
    with serve(db_path=str(source)) as laptop:
        going, done = create_run(laptop.url, name="going")["id"], create_run(laptop.url, name="done")["id"]
        for run_id, state in ((going, "open"), (done, "open"), (done, "closed")):
            writer = f"{laptop.url}/api/runs/{run_id}/writers/w1/"
            requests.put(writer, json={"state": state}, timeout=30).raise_for_status()
    copied = cli("db", "copy", str(source), postgres_url)
    assert copied.returncode == 0, copied.stderr
    lines = copied.stdout.splitlines()
    assert f"run {going} (going) -> run " in lines[0] and "still started: points it records from now on" in lines[0]
    assert f"run {done} (done) -> run " in lines[1] and "still" not in lines[1]  # finished: nothing more to come
