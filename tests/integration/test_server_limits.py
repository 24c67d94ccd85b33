"""Limits that hold: slow clients, body framing, ids, dates and zip names at their edges."""

from __future__ import annotations

import json
import logging
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve

from helpers import answered_within_a_second, create_run, raw_exchange, wait_until

HUGE = "99999999999999999999999"


def post_raw(server: ServerHandle, head: str, body: bytes = b"") -> bytes:
    """One request over its own connection; everything the server sent back."""
    return raw_exchange("127.0.0.1", server.port, head.replace("\n", "\r\n").encode() + body)


# -- slow clients --------------------------------------------------------------------


def test_clients_trickling_their_headers_delay_no_one() -> None:
    """Slowloris: 40 connections sending a header byte at a time must not take the workers."""
    with serve(header_timeout=60) as server:
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(40)]
        stop = threading.Event()
        rounds = threading.Semaphore(0)

        def trickle() -> None:
            for sock in socks:
                sock.sendall(b"GET /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            while not stop.wait(0.3):
                for sock in socks:
                    sock.sendall(b"x")
                rounds.release()

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            wait_until(lambda: server.connections >= 40, what="40 connections")
            for _ in range(3):  # every connection has trickled a few bytes since it connected
                assert rounds.acquire(timeout=30)
            answered_within_a_second(f"{server.url}/api/runs/")  # before: stuck behind 32 busy workers
        finally:
            stop.set()
            trickler.join()
            for sock in socks:
                sock.close()


def test_a_head_must_arrive_within_a_total_deadline() -> None:
    """The deadline does not restart with every byte: a trickler gets a 408."""
    with serve(header_timeout=1.0) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(30)
        sock.sendall(b"GET /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.2):
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    return

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            answer = sock.recv(65536)
        finally:
            stop.set()
            trickler.join()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert requests.get(f"{server.url}/api/runs/").status_code == 200


def test_a_request_sent_in_pieces_is_served(server: ServerHandle) -> None:
    """A parked connection whose request completes later gets its answer (and keeps alive)."""
    pieces = [b"GET /api/ru", b"ns/ HTTP/1.1\r\nHo", b"st: 127.0.0.1\r\n", b"\r\n"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        for piece in pieces:
            sock.sendall(piece)
            threading.Event().wait(0.1)  # long enough for the worker to park the connection
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        body = json.dumps({"state": "finished"}).encode()
        sock.sendall(b"PATCH /api/runs/999999/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        sock.sendall(f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        threading.Event().wait(0.1)
        sock.sendall(body[5:])
        assert sock.recv(65536).startswith(b"HTTP/1.1 404 ")


# -- body framing --------------------------------------------------------------------


@pytest.mark.parametrize("size", [b"-FFFFFFFFFFFF", b"+10", b"0x10", b"1_0", b"", b"zz", b"1" * 17, b"10 20"], ids=repr)
def test_a_malformed_chunk_size_is_a_400(size: bytes) -> None:
    with serve(max_body=1024) as server:
        head = b"POST /api/metrics/ HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        # Before: "-FFFFFFFFFFFF" made the running total negative, so the 4 KiB chunk after
        # it passed a 1 KiB limit.
        chunks = size + b"\r\n\r\n" + b"1000\r\n" + b"x" * 4096 + b"\r\n0\r\n\r\n"
        answer = raw_exchange("127.0.0.1", server.port, head + chunks)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"malformed chunk size" in answer


def test_chunked_bodies_are_read_and_limited() -> None:
    with serve(max_body=1024) as server:
        run = create_run(server.url)
        form = f"run_id={run['id']}&name=x&value=1&date=2021-01-01&metadata=&cumulative=False".encode()
        r = requests.post(
            f"{server.url}/api/metrics/",
            data=iter([form[:10], form[10:]]),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 201, r.text
        r = requests.post(f"{server.url}/api/metrics/", data=iter([b"x" * 1000, b"x" * 1000]))
        assert r.status_code == 413


@pytest.mark.parametrize(
    ("framing", "status"),
    [
        ("Transfer-Encoding: gzip", 400),
        ("Transfer-Encoding: gzip, chunked", 400),
        ("Transfer-Encoding: chunked, gzip", 400),
        ("Transfer-Encoding: identity", 400),
        ("Transfer-Encoding: chunked\nContent-Length: 5", 400),
        ("Content-Length: +5", 400),
        ("Content-Length: -1", 400),
        ("Content-Length: 5, 5", 400),
        ("Content-Length: 0x5", 400),
    ],
)
def test_body_framings_other_than_chunked_and_a_length_are_refused(
    server: ServerHandle, framing: str, status: int
) -> None:
    answer = post_raw(server, f"POST /api/metrics/ HTTP/1.1\nHost: 127.0.0.1\n{framing}\n\n", b"0\r\n\r\n")
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer


@pytest.mark.parametrize(
    "line",
    [b"GET http://[/api/ HTTP/1.1", b"GET  /api/runs/ HTTP/1.1", b"G\x00T /api/runs/ HTTP/1.1", b"GET /api/runs/"],
    ids=["bad-ipv6", "two-spaces", "nul-method", "no-version"],
)
def test_a_malformed_request_line_is_a_400_without_a_traceback(
    server: ServerHandle, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics.server"):
        answer = raw_exchange("127.0.0.1", server.port, line + b"\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b'"status":"Bad Request"' in answer
    assert not [r for r in caplog.records if r.exc_info], "a traceback in the server log"


def test_malformed_header_lines_are_a_400(server: ServerHandle) -> None:
    for header in (b"Host : 127.0.0.1", b" folded: line", b"no colon here"):
        answer = raw_exchange("127.0.0.1", server.port, b"GET /api/runs/ HTTP/1.1\r\n" + header + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 "), (header, answer)


# -- numbers and dates beyond what SQLite and datetime hold ------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/runs/{HUGE}/"),
        ("DELETE", f"/api/runs/{HUGE}/"),
        ("PATCH", f"/api/runs/{HUGE}/"),
        ("GET", f"/api/runs/-{HUGE}"),
        ("GET", f"/api/metrics/{HUGE}/?metric_type=run"),
        ("GET", f"/api/metrics/{HUGE}/?metric_type=run&format=zip"),
    ],
)
def test_ids_beyond_sqlites_range_are_404(server: ServerHandle, method: str, path: str) -> None:
    r = requests.request(method, server.url + path, json={"state": "finished"})
    assert r.status_code == 404, r.text


def test_numbers_beyond_sqlites_range_are_400(server: ServerHandle) -> None:
    run = create_run(server.url)
    metric = {"name": "x", "value": 1, "date": "2021-01-01", "metadata": "", "cumulative": False}
    answers = [
        requests.post(f"{server.url}/api/metrics/", json={**metric, "run_id": 10**30}),
        requests.post(f"{server.url}/api/metrics/", data={**metric, "run_id": str(-(10**30))}),
        requests.post(f"{server.url}/api/metrics/batch/", json={"run_id": 10**30, "metrics": []}),
        requests.post(
            f"{server.url}/api/runs/",
            data={
                "name": "big",
                "num_workers": str(10**30),
                "image_name": "custom_image",
                "custom_image_name": "x",
                "custom_image_command": "true",
                "backend": "gloo",
            },
        ),
        requests.get(f"{server.url}/api/metrics/{run['id']}/?metric_type=run&last_n={10**30}"),
        requests.get(f"{server.url}/api/metrics/{run['id']}/?metric_type=run&summarize={10**30}"),
    ]
    assert [r.status_code for r in answers] == [400] * len(answers), [r.text for r in answers]
    r = requests.post(f"{server.url}/api/pods/", data={"name": "p-big", "run_id": str(10**30)})
    assert r.status_code == 404


@pytest.mark.parametrize("date", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+23:59", "0001-01-01 00:00:00+01"])
def test_a_date_outside_years_1_to_9999_after_its_offset_is_refused_and_never_stored(
    server: ServerHandle, date: str
) -> None:
    run = create_run(server.url)
    metric = {"run_id": run["id"], "name": "x", "value": 1, "date": date, "metadata": "", "cumulative": False}
    r = requests.post(f"{server.url}/api/metrics/", data=metric)
    assert r.status_code == 400 and "date" in r.json()["message"], r.text
    batch = {"run_id": run["id"], "columns": {"name": ["x"], "value": [1], "date": [date]}}
    assert requests.post(f"{server.url}/api/metrics/batch/", json=batch).status_code == 400
    assert requests.get(f"{server.url}/api/metrics/{run['id']}/?metric_type=run").json() == {}
    assert requests.get(f"{server.url}/api/metrics/{run['id']}/?metric_type=run&format=zip").status_code == 200
    assert requests.get(f"{server.url}/api/metrics/").status_code == 200  # before: 500 for good
    assert requests.get(f"{server.url}/api/metrics/{run['id']}/?metric_type=run&since={date}").status_code == 400


# -- zip entries ---------------------------------------------------------------------


@pytest.fixture
def evil_names(fresh_server: ServerHandle) -> Iterator[tuple[ServerHandle, int]]:
    server = fresh_server
    run = create_run(server.url)
    pods = ["../../pod", "/etc/pod", "..\\..\\win"]
    for pod in pods:
        assert requests.post(f"{server.url}/api/pods/", data={"name": pod, "run_id": run["id"]}).status_code == 201
    names = ["x/../../evil", "/abs", "..", "a\\..\\b", "c:/drive", "ok @ 0", "x_.._.._evil"]
    date = "2100-01-01"  # after the run's creation: the zip keeps only those
    for name in names:
        metric = {"name": name, "value": 1, "date": date, "metadata": "", "cumulative": False}
        assert requests.post(f"{server.url}/api/metrics/", data={**metric, "run_id": run["id"]}).status_code == 201
        for pod in pods:
            assert requests.post(f"{server.url}/api/metrics/", data={**metric, "pod_name": pod}).status_code == 201
    yield server, run["id"]


def test_zip_entry_names_cannot_leave_the_folder(evil_names: tuple[ServerHandle, int], tmp_path: Path) -> None:
    server, run_id = evil_names
    r = requests.get(f"{server.url}/api/metrics/{run_id}/?metric_type=run&format=zip")
    assert r.status_code == 200
    path = tmp_path / "m.zip"
    path.write_bytes(r.content)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert len(names) == len(set(names)) == 4 * 7  # the run's and 3 pods', none lost to a clash
        for name in names:
            assert ".." not in name and not name.startswith("/") and "/" not in name and "\\" not in name, name
            assert ":" not in name, name
        assert "result_ok @ 0.json" in names  # ordinary names stay verbatim
        z.extractall(tmp_path / "out")
    assert {p.parent for p in (tmp_path / "out").rglob("*")} == {tmp_path / "out"}
