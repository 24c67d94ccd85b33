"""Clients that do not read, bodies sent without a token, paced posts: none of them holds
the workers an authenticated client needs (issue 20, items 2, 3 and 7)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve

from helpers import answered_within_a_second, create_run, raw_exchange, wait_until

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    with serve(token=TOKEN) as handle:
        yield handle


def _non_readers(server: ServerHandle, count: int, requests_each: int) -> list[socket.socket]:
    """``count`` connections that pipeline requests for a static file and never read an answer."""
    request = f"GET /static/js/charts.js HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    socks = []
    for _ in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        sock.send(request * requests_each)  # what fits now; the rest does not matter
        socks.append(sock)
    return socks


def test_clients_that_never_read_their_answers_delay_no_authenticated_request(server: ServerHandle) -> None:
    """Before: 40 such connections (no token needed: the files are public) held all 32
    workers in sendall, and ``GET /api/`` with the token waited 58 s."""
    socks = _non_readers(server, 40, 400)
    try:
        wait_until(lambda: server.connections >= 40, what="40 connections")
        answered_within_a_second(f"{server.url}/api/", AUTH, times=3)
    finally:
        for sock in socks:
            sock.close()


def test_a_client_that_does_not_read_is_served_once_it_reads(server: ServerHandle) -> None:
    """Parked answers are not lost: a reader that comes back late gets every answer, in order."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = f"GET /static/js/charts.js HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
        last = f"GET /api/ HTTP/1.1\r\nHost: 127.0.0.1\r\n{_auth_line()}Connection: close\r\n\r\n"
        sock.sendall(request * 30 + last.encode())
        data = bytearray()
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    assert data.count(b"HTTP/1.1 200 OK") == 31
    assert data.rstrip().endswith(b"}")  # the API root's JSON came last, whole


def _auth_line() -> str:
    return f"Authorization: Bearer {TOKEN}\r\n"


def test_a_body_without_the_token_is_refused_from_its_head(server: ServerHandle) -> None:
    """Before: the server read a 50 MiB body whole, then answered 401; now the head suffices."""
    head = (
        f"POST /api/metrics/batch/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + b"{" * 1000)  # the body never comes whole
        answer = sock.recv(65536)  # before: nothing until the 60 s body deadline
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:100]
    assert b"Connection: close" in answer


def test_a_foreign_origin_is_refused_from_its_head(server: ServerHandle) -> None:
    head = (
        f"POST /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nOrigin: http://evil.example\r\n"
        f"{_auth_line()}Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403 "), answer[:100]


def test_a_refused_body_is_read_and_thrown_away_so_the_client_sees_the_refusal(server: ServerHandle) -> None:
    body = b"x" * (2 * 1024 * 1024)
    head = f"POST /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
    answer = raw_exchange("127.0.0.1", server.port, head.encode() + body)
    assert answer.startswith(b"HTTP/1.1 401 ")


def test_a_refused_request_without_a_body_keeps_its_connection(server: ServerHandle) -> None:
    with requests.Session() as session:
        assert session.get(f"{server.url}/api/runs/", timeout=10).status_code == 401
        assert session.get(f"{server.url}/api/runs/", headers=AUTH, timeout=10).status_code == 200
    assert server.connections_accepted == 1


def test_every_answer_says_nosniff(server: ServerHandle) -> None:
    for path, headers in (("/api/runs/", AUTH), ("/api/runs/", {}), ("/", {})):
        r = requests.get(server.url + path, headers=headers, timeout=10)
        assert r.headers["X-Content-Type-Options"] == "nosniff", path


def test_reads_do_not_queue_behind_paced_posts() -> None:
    """Before: with 40 clients posting single metrics to a ``--pace 5`` server, each post
    held a worker while it waited its turn, and ``GET /api/runs/`` took 1.8 s."""
    with serve(pace=5) as server:
        run_id = create_run(server.url)["id"]
        stop = threading.Event()
        answered = threading.Semaphore(0)
        body = f"run_id={run_id}&name=loss&value=0.5&date=2026-01-01+00%3A00%3A00&metadata=&cumulative=False"

        def post() -> None:
            with requests.Session() as session:
                while not stop.is_set():
                    try:
                        r = session.post(
                            f"{server.url}/api/metrics/",
                            data=body,
                            headers={"Content-Type": "application/x-www-form-urlencoded"},
                            timeout=60,
                        )
                    except requests.RequestException:
                        return  # the server stopped under it
                    if r.status_code == 201:
                        answered.release()

        posters = [threading.Thread(target=post) for _ in range(40)]
        for thread in posters:
            thread.start()
        try:
            wait_until(lambda: server.connections >= 40, what="40 posting connections")
            for _ in range(3):  # posts are being answered, one every 0.2 s, the others waiting
                assert answered.acquire(timeout=30)
            answered_within_a_second(f"{server.url}/api/runs/", times=3)
        finally:
            stop.set()
            server.stop()
            for thread in posters:
                thread.join(60)


def test_bodies_in_flight_are_bounded_and_the_one_beyond_is_refused_unread() -> None:
    """Authenticated clients too: 4 x max_body of bodies at once, then 503 (clients retry)."""
    mib = 1024 * 1024
    with serve(max_body=mib) as server:
        head = f"POST /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {mib}\r\n\r\n"
        socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(4)]
        try:
            for sock in socks:
                sock.sendall(head.encode() + b" " * 1000)  # the rest never comes
            wait_until(lambda: server._http.bodies_in_flight == 4 * mib, what="4 bodies counted")
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as fifth:
                fifth.sendall(head.encode() + b" " * 1000)
                answer = fifth.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
            assert b"Retry-After: 1" in answer
        finally:
            for sock in socks:
                sock.close()
        wait_until(lambda: server._http.bodies_in_flight == 0, what="closed connections to stop counting")
        assert create_run(server.url)["id"]  # and a whole body is served as before
