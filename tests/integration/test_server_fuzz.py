"""Seeded malformed requests across every route: no 5xx, no traceback, the server still answers.

Three kinds, each reproducible from its seed:

* API requests: every method on every route, odd ids, queries and headers, and bodies of
  every shape (forms, multipart, JSON of every type, batch bodies half right, garbage);
* protocol garbage: valid requests with bytes flipped, cut, repeated or inserted, each on
  its own connection;
* ``--exec`` runs whose commands and fields are odd: none may give a 5xx or stay
  ``initialized`` (the command is always ``true`` and its arguments, so nothing runs).
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import random
import socket
import string
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from mlbench_metrics.server import ServerHandle, serve

from helpers import create_run, wait_until

SEED = 20240610
API_REQUESTS = 3000
PROTOCOL_REQUESTS = 600
EXEC_RUNS = 200

FIELDS = [
    "run_id", "name", "value", "date", "metadata", "cumulative", "pod_name", "num_workers", "num_cpus",
    "image_name", "custom_image_name", "custom_image_command", "backend", "custom_backend", "gpu_enabled",
    "light_target", "run_all_nodes", "state", "batch_id", "metrics", "columns", "packed", "labels", "phase", "ip",
]  # fmt: skip
METHODS = ["GET", "GET", "GET", "POST", "POST", "PATCH", "DELETE", "PUT", "OPTIONS", "HEAD", "BREW"]
QUERY_KEYS = ["metric_type", "since", "summarize", "last_n", "metric_filter", "format", "x",
              "name", "metric", "until", "after", "max_points", "fields"]  # fmt: skip
DATES = [
    "2021-01-02 03:04:05", "2021-01-02T03:04:05.123456Z", "2021-01-02", "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+23:59", "2021-13-45", "yesterday", "", "2021-01-02T03:04:05+99:99", "9" * 40,
]  # fmt: skip


class Fuzzer:
    """Random values of every kind, from one seeded generator."""

    def __init__(self, seed: int, ids: list[int]) -> None:
        self.r = random.Random(seed)
        self.ids = ids

    def text(self) -> str:
        r = self.r
        kind = r.randrange(8)
        if kind == 0:
            return ""
        if kind == 1:
            return "".join(r.choice(string.printable) for _ in range(r.randrange(1, 20)))
        if kind == 2:
            return "".join(chr(r.randrange(1, 0x3000)) for _ in range(r.randrange(1, 10)))
        if kind == 3:
            return r.choice(DATES)
        if kind == 4:
            return str(r.choice([0, -1, 1, 2**63, -(2**63) - 1, 10**30, *self.ids]))
        if kind == 5:
            return r.choice(["true", "False", "gloo", "custom_image", "custom_backend", "finished", "x" * 300])
        if kind == 6:
            return "%" + "".join(r.choice("0123456789abcdefXYZ%") for _ in range(4))
        return r.choice(["loss @ 0", "{rank}", 'a"b', "../../x", "\x00", "NaN", "1e309"])

    def number(self) -> Any:
        r = self.r
        return r.choice([0, -1, 1, 1.5, -0.0, 10**30, -(10**30), 2**63, float("inf"), float("nan"), *self.ids])

    def json_value(self, depth: int = 0) -> Any:
        r = self.r
        kind = r.randrange(8 if depth < 3 else 5)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return self.number()
        if kind in (3, 4):
            return self.text()
        if kind == 5:
            return [self.json_value(depth + 1) for _ in range(r.randrange(4))]
        if kind == 6:
            return {self.key(): self.json_value(depth + 1) for _ in range(r.randrange(4))}
        return self.batch_part(depth + 1)

    def key(self) -> str:
        return self.r.choice(FIELDS) if self.r.random() < 0.8 else self.text()

    def batch_part(self, depth: int) -> Any:
        """Pieces of batch bodies, half right: columns, rows, packed arrays."""
        r = self.r
        n = r.randrange(4)
        kind = r.randrange(3)
        if kind == 0:
            cols: dict[str, Any] = {"name": [self.text() or "x" for _ in range(n)], "value": [1] * n}
            cols[r.choice(["date_us", "date", "nope"])] = [r.choice([0, 10**20, -1, "x", None]) for _ in range(n)]
            if r.random() < 0.5:
                cols["metadata"] = self.json_value(depth + 1)
            if r.random() < 0.5:
                cols["cumulative"] = self.json_value(depth + 1)
            return {"columns": cols}
        if kind == 1:
            return {
                "metrics": [{k: self.json_value(depth + 1) for k in ("name", "value", "date_us")} for _ in range(n)]
            }
        raw = base64.b64encode(r.randbytes(r.randrange(0, 24))).decode()
        packed = {"count": r.choice([n, -1, 10**9, "3"]), "name": r.choice([["x"], [], "x", ["a", "b"]])}
        for field in ("name_index", "value_f64", "date_ns", "date_us"):
            if r.random() < 0.6:
                packed[field] = r.choice([raw, "!!!", None, 5])
        if r.random() < 0.5:
            packed["metadata"] = r.choice(["", {"template": "%0100d"}, [raw], "x"])
        return {"packed": packed}

    def path(self) -> str:
        r = self.r
        pk = r.choice([*map(str, self.ids), "0", "-1", "99999999999999999999999", "abc", "%00", "%ff", "\u0663",
                       "1e3", "%20", "batch", "..", "1/2"])  # fmt: skip
        return r.choice(
            [
                "/api/", "/api", "/api/runs/", "/api/runs", f"/api/runs/{pk}/", f"/api/runs/{pk}",
                "/api/metrics/", "/api/metrics/batch/", f"/api/metrics/{pk}/", f"/api/metrics/{pk}",
                "/api/pods/", "/", "/x/../api/runs/", "/api//runs/", "/" + self.text().replace(" ", ""),
                "/api/runs/stats/", f"/api/runs/{pk}/details/", f"/api/runs/{pk}/config/",
                f"/api/runs/{pk}/series/", f"/api/runs/{pk}/points/", "/static/js/api.js", "/static/../x",
            ]
        )  # fmt: skip

    def query(self) -> str:
        r = self.r
        pairs = [(r.choice(QUERY_KEYS), r.choice([self.text(), "run", "pod", "zip", "json", "5", "-1"]))
                 for _ in range(r.randrange(5))]  # fmt: skip
        return "&".join(f"{k}={_quote(v)}" for k, v in pairs)

    def body(self) -> tuple[dict[str, str], bytes]:
        r = self.r
        kind = r.randrange(7)
        if kind == 0:
            return {}, b""
        if kind == 1:
            form = {self.key(): self.text() for _ in range(r.randrange(12))}
            return {"Content-Type": "application/x-www-form-urlencoded"}, "&".join(
                f"{_quote(k)}={_quote(v)}" for k, v in form.items()
            ).encode()
        if kind in (2, 3):
            value = {self.key(): self.json_value() for _ in range(r.randrange(12))} if kind == 2 else self.json_value()
            ctype = r.choice(["application/json", "application/json; charset=utf-8", "application/x+json"])
            return {"Content-Type": ctype}, json.dumps(value).encode()
        if kind == 4:
            boundary = "b" + str(r.randrange(10**6))
            parts = [
                f'--{boundary}\r\nContent-Disposition: form-data; name="{self.key()}"\r\n'
                f"{r.choice(['', 'Content-Type: text/plain; charset=nope', 'Content-Transfer-Encoding: base64'])}"
                f"\r\n\r\n{self.text()}\r\n"
                for _ in range(r.randrange(5))
            ]
            bad = r.choice(["", f"; boundary={boundary}", "; boundary="])
            body = "".join(parts) + r.choice([f"--{boundary}--\r\n", ""])
            return {"Content-Type": f"multipart/form-data{bad or f'; boundary={boundary}'}"}, body.encode(
                "utf-8", "surrogatepass"
            )
        if kind == 5:
            return {"Content-Type": r.choice(["text/plain", "application/xml", "", "a/b; c"])}, r.randbytes(30)
        return {"Content-Type": "application/json"}, r.randbytes(r.randrange(1, 40))

    def near_valid(self) -> tuple[str, str, dict[str, str], bytes]:
        """A request a client could mean, with one to three fields wrong, missing or of another type."""
        r = self.r
        run_id = r.choice(self.ids)
        metric = {"run_id": run_id, "name": "loss @ 0", "value": 0.5, "date": "2021-01-02 03:04:05",
                  "metadata": "", "cumulative": False}  # fmt: skip
        route = r.randrange(7)
        if route == 0:
            method, path, data = "POST", "/api/runs/", {
                "name": "run-x", "num_workers": 1, "num_cpus": 1.5, "image_name": "custom_image",
                "custom_image_name": "img", "custom_image_command": "true {rank}", "backend": "gloo",
                "gpu_enabled": False, "light_target": False, "run_all_nodes": False,
            }  # fmt: skip
        elif route == 1:
            method, path, data = "POST", "/api/metrics/", metric
        elif route == 2:
            batch = {"name": ["a", "b"], "value": [1, "2"], "date_us": [0, 1], "metadata": "", "cumulative": False}
            method, path, data = "POST", "/api/metrics/batch/", {"run_id": run_id, "batch_id": "b", "columns": batch}
        elif route == 3:
            method, path, data = "PATCH", f"/api/runs/{run_id}/", {"state": "started"}
        elif route == 6:
            method, path, data = "PUT", f"/api/runs/{run_id}/config/", {"config": {"lr": 0.1, "layers": [1, 2]}}
        elif route == 4:
            method, path, data = "POST", "/api/pods/", {"name": "pod-1", "run_id": run_id, "labels": {"a": 1}}
        else:
            method, path, data = "POST", "/api/metrics/", {**metric, "pod_name": "pod-1"}
            del data["run_id"]
        for _ in range(r.randrange(1, 4)):
            if not data:
                break
            key = r.choice(list(data))
            if r.random() < 0.2:
                del data[key]
            else:
                data[key] = self.json_value(1)
        if route in (2, 3, 6) or r.random() < 0.5:
            return method, path, {"Content-Type": "application/json"}, json.dumps(data).encode()
        form = "&".join(f"{_quote(k)}={_quote(str(v))}" for k, v in data.items())
        return method, path, {"Content-Type": "application/x-www-form-urlencoded"}, form.encode()

    def headers(self, port: int) -> dict[str, str]:
        r = self.r
        out: dict[str, str] = {}
        if r.random() < 0.1:
            out["Origin"] = r.choice(["http://evil.example", "null", f"http://127.0.0.1:{port}", "http://[", "x"])
        if r.random() < 0.1:
            out["Host"] = r.choice(["evil.example", f"localhost:{port}", "[::1", "127.0.0.1:99999", "", "a b"])
        if r.random() < 0.05:
            out["Authorization"] = r.choice(["Bearer", "Bearer \u00e9", "Basic x", ""])
        return out


def _quote(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def check(status: int, ctype: str, body: bytes, what: str) -> None:
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    assert b"Traceback" not in body, what
    if ctype.startswith("application/json") and body:
        json.loads(body)


@pytest.fixture
def quiet_server(caplog: pytest.LogCaptureFixture) -> Iterator[ServerHandle]:
    """A fresh server whose log the test checks with :func:`_healthy`."""
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics.server"), serve(max_body=64 * 1024) as server:
        yield server


def test_malformed_api_requests_get_4xx_answers(quiet_server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    server = quiet_server
    ids = [create_run(server.url)["id"] for _ in range(3)]
    fuzz = Fuzzer(SEED, ids)
    statuses: Counter[int] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for i in range(API_REQUESTS):
            if fuzz.r.random() < 0.5:
                method, path, headers, body = fuzz.near_valid()
                url = path
            else:
                method = fuzz.r.choice(METHODS)
                if method == "DELETE" and fuzz.r.random() < 0.8:
                    method = "GET"  # keep most runs alive for the requests that follow
                query = fuzz.query()
                url = quote(fuzz.path(), safe="/%") + ("?" + query if query else "")
                headers, body = fuzz.body()
            headers.update(fuzz.headers(server.port))
            what = f"request {i}: {method} {url} {headers} {body[:200]!r}"
            try:
                conn.request(method, url, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
            except (http.client.HTTPException, OSError):
                conn.close()  # a refused request may close the connection; open another
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
                statuses[0] += 1
                continue
            check(answer.status, answer.getheader("Content-Type", ""), data, what)
            statuses[answer.status] += 1
            if answer.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    finally:
        conn.close()
    # The requests reached the routes: some succeeded, many were refused in many ways.
    assert statuses[0] < API_REQUESTS // 20, statuses
    assert sum(n for status, n in statuses.items() if 200 <= status < 300) > API_REQUESTS // 20, statuses
    assert {200, 201, 400, 403, 404, 405, 415} <= set(statuses), statuses
    _healthy(server, caplog)


VALID = [
    b"GET /api/runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST /api/metrics/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 71\r\n\r\nrun_id=1&name=x&value=1&date=2021-01-02+03%3A04%3A05&metadata=&cumulative=0",
    b"POST /api/metrics/batch/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b'Transfer-Encoding: chunked\r\n\r\n1f\r\n{"run_id": 1, "metrics": [], "x\r\n2\r\n":\r\n3\r\n 1}\r\n0\r\n\r\n',
    b"GET /api/metrics/1/?metric_type=run&format=zip HTTP/1.0\r\n\r\n",
    b"GET http://127.0.0.1/api/runs/1/ HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n\r\n",
]


TARGETS = [b"http://[/api/", b"http://127.0.0.1:99999/api/runs/", b"*", b"//", b"http://", b"https://x/%zz",
           b"/api/runs/%ff%fe/", b"http://[::1]/api/", b"ftp://x/", b"/" + b"a" * 9000]  # fmt: skip


def _mutate(r: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(r.randrange(1, 4)):
        kind = r.randrange(6)
        at = r.randrange(len(out) + 1)
        first, second = out.find(b" "), out.find(b" ", out.find(b" ") + 1)
        if kind == 5 and 0 < first < second:  # another request target
            out[first + 1 : second] = r.choice(TARGETS)
        elif kind == 0 and out:
            out[min(at, len(out) - 1)] = r.randrange(256)
        elif kind == 1:
            out[at:at] = r.choice(
                [b"\r\n", b"\n", b" ", b":", b"\x00", b"-", b"9" * 20, b"chunked", b"\r\n\r\n", b"[", b"%"]
            )
        elif kind == 2:
            del out[at : at + r.randrange(1, 8)]
        elif kind == 3:
            out = out[:at]
        else:
            out[at:at] = out[r.randrange(len(out) + 1) :][:20]
    return bytes(out)


def test_protocol_garbage_gets_a_4xx_or_a_closed_connection(
    quiet_server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    server = quiet_server
    r = random.Random(SEED)
    for i in range(PROTOCOL_REQUESTS):
        payload = _mutate(r, r.choice(VALID))
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # no more bytes: an incomplete request ends here
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        what = f"garbage {i}: {payload[:200]!r}"
        assert b"Traceback" not in data, what
        while data:
            head, _, rest = data.partition(b"\r\n\r\n")
            status_line = head.split(b"\r\n", 1)[0]
            assert status_line.startswith(b"HTTP/1.1 "), what
            status = int(status_line.split(b" ")[1])
            assert status < 500, f"{what}: {data[:300]!r}"
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                0,
            )
            data = rest[length:]
    _healthy(server, caplog)


def test_odd_exec_runs_get_4xx_or_run_and_never_stay_initialized(tmp_path: Any) -> None:
    r = random.Random(SEED)
    pieces = ["{run_id}", "{rank}", "{hosts}", "{backend}", "{", "}", "{{", "}}", "{x}", "{0}", "{}", "{rank[0]}",
              "{run_id.real}", "{rank:>3}", "'", '"', "\\", "a b", "--flag={backend}", "$(x)", ";", "|"]  # fmt: skip
    with serve(exec_runs=True, exec_workdir=str(tmp_path)) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        auth = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/x-www-form-urlencoded"}
        stored = []
        try:
            for i in range(EXEC_RUNS):
                command = "true " + " ".join(r.choice(pieces) for _ in range(r.randrange(5)))
                odd = {
                    "name": ["Bad Name", "x" * 101, ""],
                    "num_workers": ["0", "-1", "300", str(10**30), "x"],
                    "image_name": ["PyTorch Cifar-10 ResNet-20", "?"],
                    "custom_image_name": [""],
                    "backend": ["custom_backend", "x"],
                    "run_all_nodes": ["true", "maybe"],
                }
                form = {"name": "run", "num_workers": r.choice(["1", "2"]), "image_name": "custom_image",
                        "custom_image_name": "img", "custom_image_command": command, "backend": "gloo",
                        "custom_backend": r.choice(pieces) + r.choice(pieces), "run_all_nodes": "false"}  # fmt: skip
                for key, values in odd.items():
                    if r.random() < 0.15:
                        form[key] = r.choice(values)
                body = "&".join(f"{k}={_quote(v)}" for k, v in form.items() if r.random() < 0.95).encode()
                conn.request("POST", "/api/runs/", body=body, headers=auth)
                answer = conn.getresponse()
                data = answer.read()
                check(answer.status, answer.getheader("Content-Type", ""), data, f"run {i}: {form}")
                if answer.status == 201:
                    stored.append(json.loads(data)["id"])
        finally:
            conn.close()
        assert stored, "no run was accepted: the fuzzing misses the executor"

        def all_done() -> bool:
            return all(server.store.get_run(run_id)["state"] in ("finished", "failed") for run_id in stored)

        wait_until(all_done, timeout=120, what="every accepted run to end")


def _healthy(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    """The server still answers, and logged no error (an unhandled exception logs one)."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not errors, [r.getMessage() for r in errors[:5]]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/api/runs/")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
