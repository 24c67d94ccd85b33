"""A client connection of the embedded server, and the request it is sending.

The bytes received and not yet consumed, the head of a request whose body is still
arriving, and the deadline by which that request must be whole: a connection can be
parked between any two bytes (see ``_http.py``) and resumed by another thread, so all of
that lives here rather than on a worker's stack. Only the thread that holds the
connection (its worker, or the selector while it is parked) touches it. No threads.
"""

from __future__ import annotations

import socket
import time
from typing import Final

from ._wire import BadRequest, Head, Request, head_complete, parse_chunked, parse_head, skip_blank_lines

__all__ = ["RECV_SIZE", "BodyTooLarge", "Closed", "Connection"]

RECV_SIZE: Final = 65536
"""Bytes asked for per ``recv``."""

_DRAIN_LIMIT: Final = 256 * 1024 * 1024
_DRAIN_SECONDS: Final = 5.0


class Closed(Exception):
    """The peer closed the connection (between requests, or in the middle of one)."""


class BodyTooLarge(BadRequest):
    """A ``Content-Length`` over the limit: answer 413, then :meth:`Connection.drain` the body."""

    def __init__(self, length: int, max_body: int) -> None:
        super().__init__(413, f"body of {length} bytes is over the limit of {max_body}")
        self.length = length


class Connection:
    """A client connection and its request in progress.

    Attributes:
        buf: bytes received and not yet consumed.
        head: the parsed head of a request whose body is still arriving, else None.
        deadline: when the request in progress must be whole (``time.monotonic()``);
            None between requests.
        last_active: when the connection last finished a request (for idle expiry).
    """

    __slots__ = ("buf", "client", "deadline", "head", "last_active", "scanned", "sock")

    def __init__(self, sock: socket.socket, client: str) -> None:
        self.sock = sock
        self.client = client
        self.buf = bytearray()
        self.head: Head | None = None
        self.deadline: float | None = None
        self.scanned = 0  # how much of buf was searched for the end of the head
        self.last_active = time.monotonic()

    def received(self, data: bytes, header_timeout: float) -> None:
        """Add ``data``; the first bytes of a request start its header deadline.

        Raises:
            Closed: ``data`` is empty: the peer closed the connection.
        """
        if not data:
            raise Closed
        if self.deadline is None:
            self.deadline = time.monotonic() + header_timeout
        self.buf += data

    def fill(self, header_timeout: float) -> None:
        """One blocking ``recv`` (under the socket's timeout) into :attr:`buf`."""
        self.received(self.sock.recv(RECV_SIZE), header_timeout)

    def ready(self) -> bool:
        """Whether :attr:`buf` holds enough for a worker to make progress without waiting."""
        if self.head is None:
            skip_blank_lines(self.buf)
            ready = head_complete(self.buf, self.scanned)
            self.scanned = len(self.buf)
            return ready
        return self.head.chunked or len(self.buf) >= self.head.length

    def take_request(self, max_body: int, body_timeout: float) -> tuple[Request, bool] | None:
        """The next whole request in :attr:`buf` and whether to keep the connection after it.

        Returns None while bytes are missing (sending ``100 Continue`` once to a client
        that waits for it). Once the head is whole, the body has ``body_timeout``
        seconds to arrive.

        Raises:
            BodyTooLarge: the announced body is over ``max_body``.
            BadRequest: the request is malformed or over another limit.
        """
        head = self.head
        if head is None:
            skip_blank_lines(self.buf)
            if not self.buf:
                self.deadline = None  # only blank lines: no request started yet
                return None
            head = parse_head(self.buf, max_body)
            if head is None:
                return None
            del self.buf[: head.size]
            self.head = head
            self.deadline = time.monotonic() + body_timeout
            if not head.chunked and head.length > max_body:
                raise BodyTooLarge(head.length, max_body)
        if head.chunked:
            parsed = parse_chunked(self.buf, max_body)
            if parsed is None:
                self._continue(head)
                return None
            body, used = parsed
        elif len(self.buf) < head.length:
            self._continue(head)
            return None
        else:
            body, used = bytes(self.buf[: head.length]), head.length
        del self.buf[:used]
        self.head = None
        self.scanned = 0
        self.deadline = None  # what follows (pipelined) starts a new request
        self.last_active = time.monotonic()
        return Request(head.method, head.path, head.query, head.headers, body, self.client), head.keep_alive

    def _continue(self, head: Head) -> None:
        if head.expect_continue and not head.continue_sent:
            head.continue_sent = True
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    def drain(self, length: int) -> None:
        """Read and discard a refused body (at most 256 MiB, 5 s), so the client reads our answer."""
        deadline = time.monotonic() + _DRAIN_SECONDS
        left = min(length, _DRAIN_LIMIT) - len(self.buf)
        self.buf.clear()
        self.sock.settimeout(1.0)
        while left > 0 and time.monotonic() < deadline:
            try:
                data = self.sock.recv(min(left, 1 << 20))
            except (TimeoutError, socket.timeout):
                continue
            if not data:
                return
            left -= len(data)
