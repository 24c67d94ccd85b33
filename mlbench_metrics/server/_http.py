"""A small HTTP/1.1 server: keep-alive, one write per answer, idle connections parked.

Why not ``http.server``: it parses headers with the ``email`` package and writes the
status line, headers and body in separate sends; on a kept-alive connection Nagle's
algorithm and the client's delayed ACK then add ~40 ms to every request. Here every
answer goes out in one ``sendall`` on a socket with ``TCP_NODELAY``.

Why not a thread per connection: clients written like the upstream one open a new
connection per request and keep it open until the answer is garbage-collected, so
thousands of idle connections can pile up. A connection that stays quiet for
``park_after`` seconds (20 ms), or at once when other connections wait for a worker, is
handed back to the selector and costs no thread until it speaks again; a busy
connection keeps its worker, so back-to-back kept-alive requests need no hand-off.

Threads: ``start()`` starts the selector thread (``mlbench-server``), which accepts
and watches parked connections; workers (``mlbench-server-worker``) are started on
demand up to ``max_workers``. ``stop()`` wakes the selector, shuts every connection
down and joins every thread to one deadline.
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Callable, Final
from urllib.parse import unquote, urlsplit

from .._threads import start_blocked, start_thread

__all__ = ["HttpServer", "Request", "Response"]

_log = logging.getLogger("mlbench_metrics.server")

_MAX_LINE: Final = 8192
_MAX_HEADER_LINE: Final = 65536
_MAX_HEADERS: Final = 100
_RECV: Final = 65536
_DRAIN_LIMIT: Final = 256 * 1024 * 1024
_DRAIN_SECONDS: Final = 5.0


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: str = ""


@dataclass
class Response:
    """One HTTP answer; ``body`` is sent as is (no body for 204 and 304)."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False


Handler = Callable[[Request], Response]
ErrorFactory = Callable[[int, str], Response]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Closed(Exception):
    """The peer closed the connection (between requests, or in the middle of one)."""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Conn:
    """A client connection and the bytes read from it but not yet parsed."""

    __slots__ = ("buf", "client", "last_active", "sock")

    def __init__(self, sock: socket.socket, client: str) -> None:
        self.sock = sock
        self.client = client
        self.buf = bytearray()
        self.last_active = time.monotonic()

    def fill(self) -> None:
        data = self.sock.recv(_RECV)
        if not data:
            raise _Closed
        self.buf += data

    def readline(self, limit: int, too_long: int, what: str) -> bytes:
        start = 0
        while True:
            end = self.buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self.buf[: end + 1])
                del self.buf[: end + 1]
                if len(line) > limit:
                    raise _BadRequest(too_long, f"{what} too long")
                return line
            if len(self.buf) > limit:
                raise _BadRequest(too_long, f"{what} too long")
            start = len(self.buf)
            self.fill()

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


class HttpServer:
    """Serve ``handler`` over HTTP/1.1 on ``host:port`` (port 0 picks a free one).

    Args:
        host: the address to bind.
        port: the port; 0 for any free port (see :attr:`port`).
        handler: turns a :class:`Request` into a :class:`Response`; exceptions it raises
            become a 500 answer and a log line, never a traceback on the wire.
        error: builds the answer for protocol errors (bad request line, 413, ...).
        max_body: the largest request body accepted; larger ones get 413.
        idle_timeout: seconds a kept-alive connection may stay silent before it is closed.
        park_after: seconds of silence after which a connection gives up its worker (at
            once when other connections are waiting for one).
        max_workers: requests handled at once; more wait for a worker.
        max_connections: connections open at once; more are answered 503.
        server_header: the ``Server`` header of every answer.
    """

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        error: ErrorFactory,
        *,
        max_body: int,
        idle_timeout: float = 60.0,
        park_after: float = 0.02,
        max_workers: int = 32,
        max_connections: int = 10_000,
        server_header: str = "mlbench-metrics",
    ) -> None:
        self._handler = handler
        self._error = error
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._park_after = min(park_after, idle_timeout)
        self._max_workers = max_workers
        self._max_connections = max_connections
        self._server_header = server_header
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind(addr)
            self._sock.listen(512)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[_Conn] = set()
        self._to_park: list[_Conn] = []
        self._work: queue.SimpleQueue[_Conn | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._selector_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start accepting connections in the ``mlbench-server`` thread."""
        if self._selector_thread is not None:
            return
        self._selector_thread = start_thread(self._select_loop, "mlbench-server")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and join all threads; idempotent."""
        deadline = time.monotonic() + timeout
        if not self._stopping.is_set():
            self._stopping.set()
            self._wake()
        if self._selector_thread is not None:
            self._selector_thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            conns = list(self._open)
            workers = list(self._workers)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _ in workers:
            self._work.put(None)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers = list(self._open)
        for conn in leftovers:  # parked after the selector stopped watching
            self._close(conn)
        for s in (self._sock, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass

    @property
    def connections(self) -> int:
        """Connections open right now, busy or parked."""
        with self._lock:
            return len(self._open)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    # -- the selector thread: accept, watch parked connections -------------------

    def _select_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            parked: set[_Conn] = set()
            next_expiry = time.monotonic() + 1.0
            try:
                while not self._stopping.is_set():
                    for key, _ in sel.select(timeout=1.0):
                        if key.fileobj is self._wake_r:
                            self._wake_r.recv(4096)
                        elif key.fileobj is self._sock:
                            self._accept()
                        else:
                            conn = key.data
                            parked.discard(conn)
                            sel.unregister(conn.sock)
                            self._dispatch(conn)
                    with self._lock:
                        newly, self._to_park = self._to_park, []
                    for conn in newly:
                        try:
                            sel.register(conn.sock, selectors.EVENT_READ, conn)
                        except (KeyError, ValueError, OSError):
                            _log.exception("cannot watch the connection from %s; closing it", conn.client)
                            self._close(conn)
                            continue
                        parked.add(conn)
                    if time.monotonic() >= next_expiry:
                        self._expire(sel, parked)
                        next_expiry = time.monotonic() + 1.0
            finally:
                for conn in list(parked):
                    self._close(conn)

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                if not self._stopping.is_set():
                    _log.exception("accept failed")
                return
            self.accepted += 1  # only this thread writes it
            sock.setblocking(True)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock, str(addr))
            with self._lock:
                full = len(self._open) >= self._max_connections
                if not full:
                    self._open.add(conn)
            if full:
                try:
                    sock.settimeout(1.0)
                    self._send(sock, self._error(503, "too many connections"), close=True)
                except OSError:
                    pass
                sock.close()
                continue
            self._dispatch(conn)

    def _expire(self, sel: selectors.BaseSelector, parked: set[_Conn]) -> None:
        """Close parked connections that have been silent for ``idle_timeout``."""
        now = time.monotonic()
        for conn in [c for c in parked if now - c.last_active > self._idle_timeout]:
            parked.discard(conn)
            sel.unregister(conn.sock)
            self._close(conn)

    def _park(self, conn: _Conn) -> None:
        with self._lock:
            self._to_park.append(conn)
        self._wake()

    # -- workers ----------------------------------------------------------------------

    def _dispatch(self, conn: _Conn) -> None:
        with self._lock:
            # _idle_workers counts idle workers minus queued connections (negative: a backlog).
            start = self._idle_workers <= 0 and len(self._workers) < self._max_workers
            if start:
                worker = threading.Thread(target=self._work_loop, name="mlbench-server-worker", daemon=True)
                self._workers.append(worker)
            else:
                self._idle_workers -= 1
        self._work.put(conn)
        if start:
            start_blocked(worker)

    def _work_loop(self) -> None:
        while True:
            conn = self._work.get()
            if conn is None:
                return
            try:
                self._serve(conn)
            except Exception:
                _log.exception("connection from %s failed", conn.client)
                self._close(conn)
            with self._lock:
                self._idle_workers += 1

    def _close(self, conn: _Conn) -> None:
        with self._lock:
            self._open.discard(conn)
        try:
            conn.sock.close()
        except OSError:
            pass

    def _serve(self, conn: _Conn) -> None:
        """Serve requests on ``conn`` until it closes or goes quiet (then it is parked)."""
        sock = conn.sock
        answered = False
        try:
            while not self._stopping.is_set():
                if not conn.buf:
                    if answered and self._work.qsize() > 0:  # others wait for a worker: make way
                        self._park(conn)
                        return
                    sock.settimeout(self._park_after)
                    try:
                        conn.fill()
                    except (TimeoutError, socket.timeout):
                        self._park(conn)
                        return
                sock.settimeout(self._idle_timeout)
                try:
                    request, keep_alive = self._read_request(conn)
                except _BadRequest as exc:
                    self._send(sock, self._error(exc.status, exc.message), close=True)
                    break
                if request is None:
                    break
                try:
                    response = self._handler(request)
                except Exception:
                    _log.exception("unhandled error for %s %s", request.method, request.path)
                    response = self._error(500, "internal server error; the server log has the details")
                close = response.close or not keep_alive or self._stopping.is_set()
                self._send(sock, response, close=close)
                if close:
                    break
                answered = True
                conn.last_active = time.monotonic()
        except (_Closed, OSError):
            # The peer went away or timed out mid-request, or stop() shut the socket down.
            pass
        self._close(conn)

    # -- parsing and writing ------------------------------------------------------------

    def _read_request(self, conn: _Conn) -> tuple[Request | None, bool]:
        line = conn.readline(_MAX_LINE, 414, "request line")
        while line in (b"\r\n", b"\n"):
            line = conn.readline(_MAX_LINE, 414, "request line")
        parts = line.rstrip(b"\r\n").split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            raise _BadRequest(400, "malformed request line")
        method = parts[0].decode("latin-1")
        target = parts[1].decode("latin-1")
        version = parts[2]
        headers: dict[str, str] = {}
        while True:
            raw = conn.readline(_MAX_HEADER_LINE, 431, "request header")
            if raw in (b"\r\n", b"\n"):
                break
            if len(headers) >= _MAX_HEADERS:
                raise _BadRequest(431, "too many request headers")
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header line")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
        expect_continue = "100-continue" in headers.get("expect", "").lower()

        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked(conn)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
                if length < 0:
                    raise ValueError
            except ValueError:
                raise _BadRequest(400, "invalid Content-Length") from None
            if length > self._max_body:
                message = f"body of {length} bytes is over the limit of {self._max_body}"
                if expect_continue:
                    raise _BadRequest(413, message)
                self._send(conn.sock, self._error(413, message), close=True)
                self._drain(conn, length)
                return None, False
            if length:
                if expect_continue:
                    conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = conn.read(length)
        if target.startswith(("http://", "https://")):
            split = urlsplit(target)
            path, query = split.path or "/", split.query
        else:
            path, _, query = target.partition("?")
        return Request(method, unquote(path), query, headers, body, conn.client), keep_alive

    def _read_chunked(self, conn: _Conn) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = conn.readline(_MAX_LINE, 400, "chunk size line")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "malformed chunk size") from None
            if size == 0:
                while conn.readline(_MAX_HEADER_LINE, 431, "trailer") not in (b"\r\n", b"\n"):
                    pass
                return b"".join(chunks)
            total += size
            if total > self._max_body:
                raise _BadRequest(413, f"body is over the limit of {self._max_body} bytes")
            chunks.append(conn.read(size))
            conn.read(2)

    @staticmethod
    def _drain(conn: _Conn, length: int) -> None:
        """Read and discard a refused body, so the client gets to read our 413."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        left = min(length, _DRAIN_LIMIT) - len(conn.buf)
        conn.buf.clear()
        while left > 0 and time.monotonic() < deadline:
            data = conn.sock.recv(min(left, 1 << 20))
            if not data:
                return
            left -= len(data)

    def _send(self, sock: socket.socket, response: Response, *, close: bool) -> None:
        status = response.status
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Server: {self._server_header}"]
        body = response.body
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        else:
            lines.append(f"Content-Type: {response.content_type}")
            lines.append(f"Content-Length: {len(body)}")
        lines.extend(f"{k}: {v}" for k, v in response.headers)
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        sock.sendall(head + body)
