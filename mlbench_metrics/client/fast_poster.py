"""A lean keep-alive POST for the batch endpoint, straight on a socket.

``requests`` costs ~1 ms of CPU per request here, ``http.client`` ~0.3 ms, one
``sendall`` and a hand-parsed answer less still; a training process delivering thousands
of metrics a second feels the difference, because that CPU is taken from its training
thread (the GIL). Only batch posts go this way; every
upstream-compatible call keeps using the ``requests.Session`` (its Futures must hold a
``requests.Response``), and with proxies or a caller's own session this path is off.

Each thread of the client's executor keeps one connection; connections register in the
client's registry so ``close()`` can abort them. Errors are turned into the library's
own at this one place, like ``transport.py`` does for ``requests``. No threads are started.
"""

from __future__ import annotations

import socket
import ssl
import threading
import weakref
from typing import Any, Mapping
from urllib.parse import urlsplit

import requests
from requests.structures import CaseInsensitiveDict

from ..errors import ApiConnectionError, ApiTimeout
from .timeouts import Timeouts

__all__ = ["FastPoster", "ack_promptly"]

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def ack_promptly(sock: socket.socket) -> None:
    """Have the kernel ACK the next segments at once instead of delaying the ACK (Linux).

    Called after a request is sent, before its answer is read. A server that writes its
    answer in several segments without ``TCP_NODELAY`` (Django's ``runserver``, any
    ``wsgiref`` server) holds the body back (Nagle) until the headers are ACKed; on a
    kept-alive connection Linux delays that ACK by ~40 ms, so every request took 40 ms
    more than on a new connection (``benchmarks/client_throughput.py`` measures it).
    The option is not sticky: sending the next request clears it, hence once per request.
    Where the platform has no such option this does nothing.
    """
    if _QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        pass


class _BadAnswer(Exception):
    """The peer's bytes are not an HTTP answer we can read."""


class _Conn:
    """A socket and the bytes read from it but not consumed yet."""

    __slots__ = ("__weakref__", "buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _BadAnswer("the server closed the connection")
        self.buf += data

    def until(self, marker: bytes, limit: int = 65536) -> bytes:
        while True:
            end = self.buf.find(marker)
            if end >= 0:
                out = bytes(self.buf[:end])
                del self.buf[: end + len(marker)]
                return out
            if len(self.buf) > limit:
                raise _BadAnswer("answer headers too large")
            self.fill()

    def take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class FastPoster:
    """POST bodies to one HTTP(S) origin over per-thread kept-alive connections.

    A request is one ``sendall``; the answer is parsed from the socket directly (no
    ``email`` header parser), which is where ``http.client`` spends most of its time.

    Args:
        endpoint: the API root, ``http(s)://host:port/path/api/``.
        headers: headers for every request (User-Agent, Authorization).
        timeouts: connect and read timeouts.
        verify: as ``requests``: True, False, or a CA bundle path.
        registry: where live connections are remembered, for aborting them on close.
    """

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        verify: bool | str,
        registry: weakref.WeakSet[Any],
    ) -> None:
        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path
        self._endpoint = endpoint
        host_header = parts.netloc.rsplit("@", 1)[-1]
        fixed = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head = f"Host: {host_header}\r\n{fixed}Accept-Encoding: identity\r\n"
        self._timeouts = timeouts
        self._registry = registry
        self._local = threading.local()
        self._context: ssl.SSLContext | None = None
        if self._https:
            if verify is False:
                self._context = ssl._create_unverified_context()
            elif isinstance(verify, str):
                self._context = ssl.create_default_context(cafile=verify)
            else:
                self._context = ssl.create_default_context()

    def _connection(self, url: str) -> _Conn:
        conn: _Conn | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            sock = socket.create_connection((self._host, self._port), timeout=self._timeouts.connect)
        except (TimeoutError, socket.timeout) as exc:
            raise ApiTimeout(f"POST {url}: connecting timed out", sent=False, method="POST", url=url) from exc
        except OSError as exc:
            raise ApiConnectionError(f"POST {url}: {exc}", sent=False, method="POST", url=url) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(self._timeouts.read)
        except OSError as exc:
            sock.close()
            raise ApiConnectionError(f"POST {url}: {exc}", sent=False, method="POST", url=url) from exc
        conn = _Conn(sock)
        self._local.conn = conn
        self._registry.add(conn)
        return conn

    def post(self, path: str, body: bytes, content_type: str) -> requests.Response:
        """Send one POST and return its answer as a ``requests.Response``.

        Raises:
            ApiConnectionError, ApiTimeout: no usable answer (``sent`` says whether the
                request may have reached the server).
        """
        url = self._endpoint + path
        conn = self._connection(url)
        head = (
            f"POST {self._path}{path} HTTP/1.1\r\n{self._head}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        try:
            conn.sock.sendall(head + body)
            ack_promptly(conn.sock)
            status, reason, headers, data = self._read_answer(conn)
        except (TimeoutError, socket.timeout) as exc:
            self._discard(conn)
            raise ApiTimeout(f"POST {url}: no answer in time", method="POST", url=url) from exc
        except (_BadAnswer, OSError, ValueError) as exc:
            self._discard(conn)
            raise ApiConnectionError(f"POST {url}: {exc!r}", method="POST", url=url) from exc
        response = requests.Response()
        response.status_code = status
        response.reason = reason
        response.headers = headers
        response._content = data
        response.encoding = "utf-8"
        response.url = url
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = url
        response.request = request
        return response

    def _read_answer(self, conn: _Conn) -> tuple[int, str, CaseInsensitiveDict[str], bytes]:
        head = conn.until(b"\r\n\r\n").decode("latin-1")
        status_line, _, header_text = head.partition("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or not code.isdigit():
            raise _BadAnswer(f"not an HTTP answer: {status_line[:80]!r}")
        headers: CaseInsensitiveDict[str] = CaseInsensitiveDict()
        for line in header_text.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip()] = value.strip()
        status = int(code)
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            parts = []
            while size := int(conn.until(b"\r\n").split(b";", 1)[0], 16):
                parts.append(conn.take(size))
                conn.take(2)
            conn.until(b"\r\n")  # no trailers are sent to us
            data = b"".join(parts)
        elif "Content-Length" in headers:
            data = conn.take(int(headers["Content-Length"]))
        elif status in (204, 304) or status < 200:
            data = b""
        else:  # delimited by the end of the connection
            while True:
                try:
                    conn.fill()
                except _BadAnswer:
                    break
            data, conn.buf = bytes(conn.buf), bytearray()
            self._discard(conn)
        if "close" in headers.get("Connection", "").lower() or version == "HTTP/1.0":
            self._discard(conn)
        return status, reason, headers, data

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
