"""A dashboard-shaped HTTP server that writes each answer in several segments.

Django's ``runserver`` (wsgiref underneath) writes the status line and headers in one
``send`` and the body in another, on a socket without ``TCP_NODELAY``, and keeps
HTTP/1.1 connections alive. On such a connection the body waits (Nagle) for the ACK of
the headers, and a client in delayed-ACK mode sends that ACK only after ~40 ms: every
request on a kept-alive connection then takes ~40 ms. This server reproduces that on
127.0.0.1 with :mod:`http.server` (which does the same: headers flushed, then the body).

It answers the few endpoints a metrics client touches, with the dashboard's shapes:
``POST /api/metrics/`` (201, one metric), ``GET /api/runs/<id>/`` and ``GET /api/runs/``.
It has no batch endpoint, like the dashboard. It counts what it stored.

Used by ``tests/`` and by ``benchmarks/client_throughput.py``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as runserver
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()  # one write: status line and headers
        half = len(body) // 2 if self.server.segments > 2 else len(body)
        self.wfile.write(body[:half])  # the body, in one or two further writes
        if half < len(body):
            self.wfile.write(body[half:])

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.startswith("/api/runs/") and path.rsplit("/", 1)[-1].isdigit():
            run_id = int(path.rsplit("/", 1)[-1])
            self._answer(200, {"id": run_id, "name": "segmented", "state": "started"})
        elif path == "/api/runs":
            self._answer(200, [{"id": 1, "name": "segmented", "state": "started"}])
        else:
            self._answer(404, {"detail": "Not found."})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.server.work > 0:
            self.server.idle.wait(self.server.work)  # the dashboard's own time per post (never set)
        if self.path.split("?", 1)[0].rstrip("/") != "/api/metrics":
            self._answer(404, {"detail": "Not found."})
            return
        fields = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        with self.server.lock:
            self.server.stored += 1
        self._answer(201, {"id": self.server.stored, **fields})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    segments = 2
    stored = 0
    work = 0.0
    lock: threading.Lock
    idle: threading.Event


class SegmentedServer:
    """The server on 127.0.0.1, on a thread it owns; ``stop()`` joins it.

    Args:
        segments: 2 (headers, then body) as runserver, or 3 (the body in two writes).
        work: seconds each metric post takes the server (the dashboard's Django and
            SQLite take about 15 ms), for benchmarks; 0 in tests.
    """

    def __init__(self, segments: int = 2, work: float = 0.0) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.segments = segments
        self._server.work = work
        self._server.idle = threading.Event()
        self._server.lock = threading.Lock()
        self._thread = threading.Thread(target=self._server.serve_forever, name="segmented-server", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as ``ApiClient(url=...)`` takes it."""
        return f"127.0.0.1:{self._server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def stored(self) -> int:
        """How many metrics were posted and answered 201."""
        with self._server.lock:
            return self._server.stored

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> SegmentedServer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()
