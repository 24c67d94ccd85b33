"""Bad input, limits, tokens, keep-alive, persistence and concurrency of the embedded server."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import requests

from mlbench_metrics.server import ServerHandle, serve

from helpers import create_run, raw_exchange


def _host_port(server: ServerHandle) -> tuple[str, int]:
    return "127.0.0.1", server.port


def _assert_json_error(r: requests.Response, status: int) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) >= {"status", "message"}
    assert "Traceback" not in r.text


def test_malformed_bodies(server: ServerHandle) -> None:
    url = f"{server.url}/api/metrics/"
    _assert_json_error(requests.post(url, data=b"{not json", headers={"Content-Type": "application/json"}), 400)
    _assert_json_error(requests.post(url, data=b"[1, 2]", headers={"Content-Type": "application/json"}), 400)
    _assert_json_error(
        requests.post(url, data=b"\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"}), 400
    )
    _assert_json_error(requests.post(url, data=b"<x/>", headers={"Content-Type": "application/xml"}), 415)
    many = "&".join(f"f{i}=1" for i in range(1001))
    _assert_json_error(
        requests.post(url, data=many, headers={"Content-Type": "application/x-www-form-urlencoded"}), 400
    )
    _assert_json_error(
        requests.post(f"{server.url}/api/runs/", data=b"", headers={"Content-Type": "application/json"}), 400
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/runs/"),
        ("POST", "/api/metrics/"),
        ("POST", "/api/metrics/batch/"),
        ("PUT", "/api/runs/{run}/config/"),
    ],
)
def test_json_nested_past_the_parsers_depth_is_a_400(server: ServerHandle, method: str, path: str) -> None:
    # 10 KB of brackets: json.loads gives up with RecursionError, which is not a ValueError.
    deep = b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}"
    run = create_run(server.url)
    r = requests.request(
        method, server.url + path.format(run=run["id"]), data=deep, headers={"Content-Type": "application/json"}
    )
    _assert_json_error(r, 400)
    assert "nested" in r.json()["message"]


def test_unknown_paths_and_methods(server: ServerHandle) -> None:
    _assert_json_error(requests.get(f"{server.url}/nothing/here"), 404)
    _assert_json_error(requests.get(f"{server.url}/api/unknown/"), 404)
    _assert_json_error(requests.delete(f"{server.url}/api/metrics/"), 405)
    _assert_json_error(requests.post(f"{server.url}/api/metrics/7/"), 405)
    _assert_json_error(requests.request("BREW", f"{server.url}/api/runs/"), 405)


def test_body_over_the_limit_is_413() -> None:
    with serve(max_body=1024) as small:
        r = requests.post(
            f"{small.url}/api/metrics/", data=b"x" * 4096, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        _assert_json_error(r, 413)
        # A much larger body: the server drains it so the client still reads the 413.
        r = requests.post(
            f"{small.url}/api/metrics/", data=b"x" * (8 * 1024 * 1024), headers={"Content-Type": "application/json"}
        )
        _assert_json_error(r, 413)
        # The server is still fine.
        assert requests.get(f"{small.url}/api/runs/").status_code == 200


def test_protocol_garbage_gets_a_json_400(server: ServerHandle) -> None:
    answer = raw_exchange(*_host_port(server), b"THIS IS NOT HTTP\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"status":"Bad Request"' in answer
    answer = raw_exchange(*_host_port(server), b"GET /api/runs/ HTTP/1.1\r\nContent-Length: banana\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    answer = raw_exchange(*_host_port(server), b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 ")
    assert requests.get(f"{server.url}/api/runs/").status_code == 200


def test_204_has_no_body_and_the_connection_stays_usable(server: ServerHandle) -> None:
    run = create_run(server.url)
    with socket.create_connection(_host_port(server), timeout=10) as sock:
        request = (
            f"DELETE /api/runs/{run['id']}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            "GET /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        ).encode()
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    first, rest = data.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 204 No Content")
    assert rest.startswith(b"HTTP/1.1 200 OK"), "the 204 must carry no bytes after its headers"


def test_keep_alive_reuses_one_connection(fresh_server: ServerHandle) -> None:
    with requests.Session() as session:
        run = create_run(fresh_server.url, session=session)
        for i in range(20):
            r = session.post(
                f"{fresh_server.url}/api/metrics/",
                data={
                    "run_id": run["id"],
                    "name": "x",
                    "value": i,
                    "date": "2026-01-01 00:00:00",
                    "metadata": "",
                    "cumulative": False,
                },
            )
            assert r.status_code == 201
        assert fresh_server.connections == 1


def test_token_is_required_when_set() -> None:
    with serve(token="s3cret") as guarded:
        _assert_json_error(requests.get(f"{guarded.url}/api/runs/"), 401)
        r = requests.get(f"{guarded.url}/api/runs/", headers={"Authorization": "Bearer wrong"})
        _assert_json_error(r, 401)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = requests.get(f"{guarded.url}/api/runs/", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


def test_data_survives_a_restart_on_the_same_file(tmp_path: Path) -> None:
    db = str(tmp_path / "metrics.db")
    with serve(db_path=db) as first:
        run = create_run(first.url, name="persistent")
        requests.post(
            f"{first.url}/api/metrics/",
            data={
                "run_id": run["id"],
                "name": "loss",
                "value": 0.1,
                "date": "2026-01-01 00:00:00",
                "metadata": "",
                "cumulative": False,
            },
        )
    assert (tmp_path / "metrics.db").exists()
    with serve(db_path=db) as second:
        runs = requests.get(f"{second.url}/api/runs/").json()
        assert [r["name"] for r in runs] == ["persistent"]
        body = requests.get(f"{second.url}/api/metrics/{run['id']}", params={"metric_type": "run"}).json()
        assert body["loss"][0]["value"] == "0.1"
        # Ids continue after the old ones rather than being reused.
        assert create_run(second.url)["id"] > run["id"]
        assert second.store.path == db


def test_eight_threads_posting_lose_nothing(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    per_thread = 150
    errors: list[str] = []
    start = threading.Barrier(8)

    def worker(index: int) -> None:
        with requests.Session() as session:
            start.wait()
            for i in range(per_thread):
                r = session.post(
                    f"{fresh_server.url}/api/metrics/",
                    data={
                        "run_id": run["id"],
                        "name": f"t{index}",
                        "value": i,
                        "date": "2026-01-01 00:00:00",
                        "metadata": "",
                        "cumulative": False,
                    },
                )
                if r.status_code != 201:
                    errors.append(r.text)
            batch = {
                "run_id": run["id"],
                "batch_id": f"thread-{index}",
                "columns": {"name": [f"b{index}"] * 100, "value": ["1"] * 100, "date_us": list(range(100))},
            }
            r = session.post(f"{fresh_server.url}/api/metrics/batch/", json=batch)
            if r.status_code != 201:
                errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fresh_server.store.count_metrics(run["id"]) == 8 * (per_thread + 100)
    body = requests.get(f"{fresh_server.url}/api/metrics/{run['id']}", params={"metric_type": "run"}).json()
    for index in range(8):
        assert sorted(int(p["value"]) for p in body[f"t{index}"]) == list(range(per_thread))


def test_stop_closes_open_connections_and_threads() -> None:
    existing = set(threading.enumerate())
    handle = serve()
    session = requests.Session()
    session.get(f"{handle.url}/api/runs/")
    assert handle.connections == 1
    ours = set(threading.enumerate()) - existing
    assert {t.name for t in ours} == {"mlbench-server", "mlbench-server-worker"}
    handle.stop(timeout=5)
    assert handle.connections == 0
    assert not any(t.is_alive() for t in ours)
    session.close()
    handle.stop()  # idempotent


def test_responses_are_json_never_tracebacks(server: ServerHandle) -> None:
    paths = ["/api/runs/x/", "/api/metrics/x/?metric_type=run", "/api/metrics/?x=1", "/api/pods/"]
    for path in paths:
        r = requests.get(server.url + path)
        assert r.headers["Content-Type"] == "application/json"
        json.loads(r.text)


def test_many_idle_connections_cost_no_threads() -> None:
    """Upstream-style clients hold a connection per unanswered future; the server copes."""
    existing = set(threading.enumerate())
    with serve() as handle:
        socks = []
        try:
            for _ in range(300):
                sock = socket.create_connection(("127.0.0.1", handle.port), timeout=30)
                sock.sendall(b"GET /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                socks.append(sock)
            for sock in socks:
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            assert handle.connections == 300
            workers = [t for t in set(threading.enumerate()) - existing if t.name == "mlbench-server-worker"]
            assert len(workers) <= 32
            # Every connection still works after the others went quiet.
            socks[0].sendall(b"GET /api/pods/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert socks[0].recv(65536).startswith(b"HTTP/1.1 200 OK")
        finally:
            for sock in socks:
                sock.close()
