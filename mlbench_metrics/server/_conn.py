"""A client connection of the embedded server, the request it is sending, the answer it is reading.

The bytes received and not yet consumed, the head of a request whose body is still
arriving, the deadline by which that request must be whole, and the answer's bytes the
client has not taken yet: a connection can be parked between any two bytes, either way
(see ``_http.py``), and resumed by another thread, so all of that lives here rather than
on a worker's stack. Only the thread that holds the connection (its worker, or the
selector while it is parked) touches it. No threads.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Callable, Final, Optional

from ._wire import BadRequest, Head, Request, Response, head_complete, parse_chunked, parse_head, skip_blank_lines

__all__ = [
    "DRAIN_LIMIT",
    "DRAIN_SECONDS",
    "RECV_SIZE",
    "BodyBudget",
    "BodyTooLarge",
    "Closed",
    "Connection",
    "Refused",
    "Screen",
    "listen_socket",
]

_log = logging.getLogger("mlbench_metrics.server")

RECV_SIZE: Final = 65536
"""Bytes asked for per ``recv``."""

DRAIN_LIMIT: Final = 256 * 1024 * 1024
"""The most bytes of a refused body read (and thrown away) so the client reads the refusal."""

DRAIN_SECONDS: Final = 5.0
"""How long a refused body may take to be thrown away before the connection is closed."""

OUT_AHEAD: Final = 256 * 1024
"""Bytes of a streamed answer made ahead of what the client has taken."""

Screen = Callable[[Request], Optional[Response]]
"""Looks at a request's head (its ``body`` still empty): a refusal, or None to read the body."""


class Closed(Exception):
    """The peer closed the connection (between requests, or in the middle of one)."""


class Refused(Exception):
    """The head alone was refused (:data:`Screen`): answer ``response``, then throw the body away.

    Attributes:
        length: the announced body length (``DRAIN_LIMIT`` for a chunked body).
        keep_alive: the client asked to keep the connection.
    """

    def __init__(self, response: Response, length: int, keep_alive: bool) -> None:
        super().__init__(response.status)
        self.response = response
        self.length = length
        self.keep_alive = keep_alive


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
        last_active: when the connection last finished a request or took answer bytes
            (for idle expiry).
        out: answer bytes the client has not taken yet.
        stream: the rest of a streamed answer's body, or None.
        close_after: close once ``out`` and ``stream`` are sent.
        discard: bytes of a refused body still to read and throw away before closing.
        reserved: bytes the server counts for the body being received (its limit on
            bodies in flight), until the request is answered or the connection closes.
    """

    __slots__ = (
        "buf",
        "chunked",
        "client",
        "close_after",
        "deadline",
        "discard",
        "head",
        "last_active",
        "out",
        "reserved",
        "scanned",
        "sock",
        "stream",
    )

    def __init__(self, sock: socket.socket, client: str) -> None:
        self.sock = sock
        self.client = client
        self.buf = bytearray()
        self.head: Head | None = None
        self.deadline: float | None = None
        self.scanned = 0  # how much of buf was searched for the end of the head
        self.last_active = time.monotonic()
        self.out = bytearray()
        self.stream: Iterator[bytes] | None = None
        self.close_after = False
        self.discard = 0
        self.reserved = 0
        self.chunked = True

    @property
    def sending(self) -> bool:
        """Whether an answer is still going out (then no further request is read)."""
        return bool(self.out) or self.stream is not None

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

    def take_request(
        self, max_body: int, body_timeout: float, screen: Screen | None = None
    ) -> tuple[Request, bool] | None:
        """The next whole request in :attr:`buf` and whether to keep the connection after it.

        Returns None while bytes are missing (queueing ``100 Continue`` in :attr:`out`
        once for a client that waits for it). Once the head is whole, ``screen`` sees it
        before any of the body is kept, and the body has ``body_timeout`` seconds to arrive.

        Raises:
            Refused: ``screen`` refused the head.
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
            if screen is not None:
                refusal = screen(Request(head.method, head.path, head.query, head.headers, b"", self.client))
                if refusal is not None:
                    raise Refused(refusal, DRAIN_LIMIT if head.chunked else head.length, head.keep_alive)
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
        request = Request(head.method, head.path, head.query, head.headers, body, self.client, head.http10)
        return request, head.keep_alive

    def _continue(self, head: Head) -> None:
        if head.expect_continue and not head.continue_sent:
            head.continue_sent = True
            self.out += b"HTTP/1.1 100 Continue\r\n\r\n"

    def refuse_body(self, length: int) -> None:
        """After a refusal: throw away what came of the body and up to ``length`` bytes more
        (at most :data:`DRAIN_LIMIT`, within :data:`DRAIN_SECONDS`), then close, so the client
        reads the refusal rather than a reset. Nothing of it is kept in memory."""
        self.discard = max(0, min(length, DRAIN_LIMIT) - len(self.buf))
        self.buf.clear()
        self.head = None
        self.close_after = True
        self.deadline = time.monotonic() + DRAIN_SECONDS

    def discarded(self, data: bytes) -> bool:
        """Count ``data`` as thrown away; True while more is to come.

        Raises:
            Closed: ``data`` is empty: the peer closed the connection.
        """
        if not data:
            raise Closed
        self.discard = max(0, self.discard - len(data))
        return self.discard > 0

    # -- the answer going out: sent as far as the client takes it, never waiting ------------

    def queue(
        self, head: bytes, body: bytes | None, stream: Iterable[bytes] | None, *, close: bool, chunked: bool = True
    ) -> None:
        """Queue an answer: its head, then ``body`` or the pieces of ``stream`` (framed as chunks
        unless ``chunked`` is false: then the connection's end is the body's, so ``close``)."""
        self.out += head
        self.chunked = chunked
        if stream is not None:
            self.stream = iter(stream)
        elif body:
            self.out += body
        self.close_after = close

    def flush(self) -> bool:
        """Send what there is to send, as far as the client takes it now; True when all went.

        A streamed answer is framed in chunks here, and asked for its next pieces only
        when fewer than :data:`OUT_AHEAD` bytes wait, so it never runs ahead of the client
        by more than that.

        Raises:
            OSError: the connection failed.
            Closed: a streamed answer failed half-way (logged): closing tells the client it
                is incomplete, since its last chunk never comes.
        """
        self.sock.settimeout(0.0)
        while True:
            while self.out:
                try:
                    sent = self.sock.send(self.out)
                except (BlockingIOError, InterruptedError):
                    return False
                del self.out[:sent]
                self.last_active = time.monotonic()
            if self.stream is None:
                return True
            self._refill(self.stream)

    def _refill(self, stream: Iterator[bytes]) -> None:
        try:
            for piece in stream:
                if piece and not self.chunked:
                    self.out += piece
                elif piece:
                    self.out += b"%x\r\n" % len(piece)
                    self.out += piece
                    self.out += b"\r\n"
                if len(self.out) >= OUT_AHEAD:
                    return
        except Exception:
            self.stream = None
            _log.exception("a streamed answer to %s failed half-way; closing the connection", self.client)
            raise Closed from None
        self.stream = None
        if self.chunked:
            self.out += b"0\r\n\r\n"

    def send_parked(self) -> bool | None:
        """From the selector, parked: send what waits without blocking (no stream is read here).

        Returns:
            True when the bytes went (a worker goes on: the rest of a streamed answer, or
            the next request), False to keep waiting, None when the connection failed.
        """
        try:
            self.sock.settimeout(0.0)
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return None
        del self.out[:sent]
        self.last_active = time.monotonic()
        return not self.out


class BodyBudget:
    """The bytes of request bodies being received or handled at once, within a limit.

    A body is counted (:attr:`Connection.reserved`) once its head is read and it does not
    come whole with it, until its request is answered or its connection closes; one that
    would go beyond the limit is answered 503 and thrown away unread. Thread-safe.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def reserve(self, conn: Connection, max_body: int) -> bool:
        """Count the body ``conn`` is receiving (``max_body`` for a chunked one); False when it does not fit."""
        assert conn.head is not None
        size = max(1, max_body if conn.head.chunked else conn.head.length)
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
        conn.reserved = size
        return True

    def release(self, conn: Connection) -> None:
        """Stop counting ``conn``'s body (idempotent)."""
        if conn.reserved:
            with self._lock:
                self.used -= conn.reserved
            conn.reserved = 0


def listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port) and listening."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    return sock
