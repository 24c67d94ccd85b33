"""A small HTTP/1.1 server: keep-alive, one thread per connection, one write per answer.

Why not ``http.server``: it parses headers with the ``email`` package and writes the
status line, headers and body in separate sends; on a kept-alive connection Nagle's
algorithm and the client's delayed ACK then add ~40 ms to every request. Here every
answer goes out in one ``sendall`` on a socket with ``TCP_NODELAY``.

Threads: ``HttpServer.start()`` starts one acceptor thread (``mlbench-server``); each
accepted connection gets a thread (``mlbench-server-conn``). ``stop()`` wakes the
acceptor, shuts every open connection down and joins all of them to one deadline.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import BinaryIO, Callable, Final, cast
from urllib.parse import unquote, urlsplit

__all__ = ["HttpServer", "Request", "Response"]

_log = logging.getLogger("mlbench_metrics.server")

_MAX_LINE: Final = 8192
_MAX_HEADER_LINE: Final = 65536
_MAX_HEADERS: Final = 100
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


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class HttpServer:
    """Serve ``handler`` over HTTP/1.1 on ``host:port`` (port 0 picks a free one).

    Args:
        host: the address to bind.
        port: the port; 0 for any free port (see :attr:`port`).
        handler: turns a :class:`Request` into a :class:`Response`; exceptions it raises
            become a 500 answer and a log line, never a traceback on the wire.
        error: builds the answer for protocol errors (bad request line, 413, ...).
        max_body: the largest request body accepted; larger ones get 413.
        idle_timeout: seconds a kept-alive connection may stay silent.
        max_connections: connections served at once; more are answered 503.
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
        max_connections: int = 256,
        server_header: str = "mlbench-metrics",
    ) -> None:
        self._handler = handler
        self._error = error
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._server_header = server_header
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind(addr)
            self._sock.listen(128)
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._acceptor: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start accepting connections in the ``mlbench-server`` thread."""
        if self._acceptor is not None:
            return
        self._acceptor = threading.Thread(target=self._accept_loop, name="mlbench-server", daemon=True)
        self._acceptor.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection and join all threads; idempotent."""
        deadline = time.monotonic() + timeout
        if not self._stopping.is_set():
            self._stopping.set()
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        if self._acceptor is not None:
            self._acceptor.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            conns = list(self._conns.items())
        for sock, _ in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _, thread in conns:
            thread.join(max(0.0, deadline - time.monotonic()))
        for s in (self._sock, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass

    @property
    def connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._conns)

    # -- accepting ---------------------------------------------------------------

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        conn, addr = self._sock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        if self._stopping.is_set():
                            return
                        _log.exception("accept failed")
                        continue
                    self._spawn(conn, addr)

    def _spawn(self, conn: socket.socket, addr: object) -> None:
        conn.setblocking(True)
        conn.settimeout(self._idle_timeout)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if len(self._conns) >= self._max_connections:
                busy = True
            else:
                busy = False
                thread = threading.Thread(
                    target=self._serve_connection, args=(conn, str(addr)), name="mlbench-server-conn", daemon=True
                )
                self._conns[conn] = thread
        if busy:
            self._send(conn, self._error(503, "too many connections"), close=True)
            conn.close()
            return
        thread.start()

    # -- one connection ------------------------------------------------------------

    def _serve_connection(self, conn: socket.socket, client: str) -> None:
        rfile = cast(BinaryIO, conn.makefile("rb", buffering=65536))
        try:
            while not self._stopping.is_set():
                try:
                    request, keep_alive = self._read_request(conn, rfile, client)
                except _BadRequest as exc:
                    self._send(conn, self._error(exc.status, exc.message), close=True)
                    return
                if request is None:
                    return
                try:
                    response = self._handler(request)
                except Exception:
                    _log.exception("unhandled error for %s %s", request.method, request.path)
                    response = self._error(500, "internal server error; the server log has the details")
                close = response.close or not keep_alive or self._stopping.is_set()
                self._send(conn, response, close=close)
                if close:
                    return
        except (OSError, ValueError):
            # The peer went away, timed out while idle, or stop() shut the socket down.
            return
        finally:
            with self._lock:
                self._conns.pop(conn, None)
            try:
                rfile.close()
                conn.close()
            except OSError:
                pass

    def _read_request(self, conn: socket.socket, rfile: BinaryIO, client: str) -> tuple[Request | None, bool]:
        readline = rfile.readline
        read = rfile.read
        line = readline(_MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):
            line = readline(_MAX_LINE + 1)
        if not line:
            return None, False
        if len(line) > _MAX_LINE:
            raise _BadRequest(414, "request line too long")
        parts = line.rstrip(b"\r\n").split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            raise _BadRequest(400, "malformed request line")
        method = parts[0].decode("latin-1")
        target = parts[1].decode("latin-1")
        version = parts[2]
        headers: dict[str, str] = {}
        while True:
            raw = readline(_MAX_HEADER_LINE + 1)
            if raw in (b"\r\n", b"\n", b""):
                break
            if len(raw) > _MAX_HEADER_LINE or len(headers) >= _MAX_HEADERS:
                raise _BadRequest(431, "request headers too large")
            name, sep, value = raw.decode("latin-1").partition(":")
            if not sep:
                raise _BadRequest(400, "malformed header line")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection

        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked(readline, read)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
                if length < 0:
                    raise ValueError
            except ValueError:
                raise _BadRequest(400, "invalid Content-Length") from None
            if length > self._max_body:
                if "100-continue" not in headers.get("expect", "").lower():
                    self._send(
                        conn,
                        self._error(413, f"body of {length} bytes is over the limit of {self._max_body}"),
                        close=True,
                    )
                    self._drain(read, length)
                    return None, False
                raise _BadRequest(413, f"body of {length} bytes is over the limit of {self._max_body}")
            if length:
                if "100-continue" in headers.get("expect", "").lower():
                    conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = read(length)
                if len(body) < length:
                    return None, False
        if target.startswith(("http://", "https://")):
            parts_ = urlsplit(target)
            path, query = parts_.path or "/", parts_.query
        else:
            path, _, query = target.partition("?")
        return Request(method, unquote(path), query, headers, body, client), keep_alive

    def _read_chunked(self, readline: Callable[[int], bytes], read: Callable[[int], bytes]) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = readline(_MAX_LINE + 1)
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "malformed chunk size") from None
            if size == 0:
                while readline(_MAX_HEADER_LINE + 1) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > self._max_body:
                raise _BadRequest(413, f"body is over the limit of {self._max_body} bytes")
            chunks.append(read(size))
            read(2)

    @staticmethod
    def _drain(read: Callable[[int], bytes], length: int) -> None:
        """Read and discard a refused body, so the client gets to read our 413."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        left = min(length, _DRAIN_LIMIT)
        while left > 0 and time.monotonic() < deadline:
            got = read(min(left, 1 << 20))
            if not got:
                return
            left -= len(got)

    def _send(self, conn: socket.socket, response: Response, *, close: bool) -> None:
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
        conn.sendall(head + body)
