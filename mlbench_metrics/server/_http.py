"""A small HTTP/1.1 server: keep-alive, no worker ever waits on a client, idle connections parked.

Why not ``http.server``: it writes the status line, headers and body in separate sends;
with Nagle's algorithm and delayed ACKs that adds ~40 ms per kept-alive request. Here an
answer goes out in as few sends as the socket takes, with ``TCP_NODELAY``.

Why not a thread per connection: upstream-style clients keep thousands of idle
connections open. A connection quiet for ``park_after`` (20 ms), or at once when others
wait for a worker, is handed to the selector and costs no thread until it speaks again.

A worker never waits on a client. Bytes: it waits ``park_after`` at most; a request that
arrives in pieces is parked and the selector reads the rest (slowloris holds no worker),
within total deadlines (``header_timeout``, ``body_timeout``; 408 after). Answers: sent
without blocking; what the client does not take is parked with the connection and the
selector sends it as the client reads (a streamed answer gets a worker again for its next
pieces), and no further request is read meanwhile, so a client that pipelines requests
and never reads holds one answer, never a worker. The access checks (``screen``) see a
request's head before its body is read; a refused body is thrown away unread, and bodies
in progress are counted against ``max_bodies`` (503 beyond). Requests that must take
turns (``serial``: paced posts) wait in a thread of their own, not in workers.

When the process runs out of file descriptors, the selector stops accepting for a growing
pause (50 ms to 1 s) and logs once, instead of spinning. A connection and its request
and answer in progress are ``_conn.py``; parsing and answers' bytes, ``_wire.py``.

Threads: ``start()`` starts the selector thread (``mlbench-server``) and, with
``serial``, ``mlbench-server-serial``; workers (``mlbench-server-worker``) start on demand
up to ``max_workers``. ``stop()`` wakes the selector, shuts every connection down and
joins every thread to one deadline.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import selectors
import socket
import threading
import time
from typing import Callable, Final

from .._threads import start_blocked, start_thread
from ._conn import RECV_SIZE, BodyBudget, BodyTooLarge, Closed, Connection, Refused, Screen, listen_socket
from ._wire import BadRequest, Request, Response, encode_response

__all__ = ["HttpServer", "Request", "Response", "listen_socket"]

_log = logging.getLogger("mlbench_metrics.server")

# accept() errors that mean "out of descriptors or memory, for now": pause, do not spin.
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PAUSE_MIN: Final = 0.05
_PAUSE_MAX: Final = 1.0


Handler = Callable[[Request], Response]
ErrorFactory = Callable[[int, str], Response]
Serial = Callable[[Request], bool]


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
        header_timeout: seconds from a request's first byte until its head must be whole.
        body_timeout: seconds from the end of the head until the body must be whole.
        park_after: seconds of silence after which a connection gives up its worker (at
            once when other connections are waiting for one).
        max_workers: requests handled at once; more wait for a worker.
        max_connections: connections open at once; more are answered 503.
        max_bodies: bytes of request bodies being received or handled at once (default
            four times ``max_body``); a body that would go beyond is answered 503 (clients
            retry) and thrown away unread, so many large posts cannot exhaust memory.
        server_header: the ``Server`` header of every answer.
        screen: sees each request's head before its body is read and may refuse it.
        serial: requests for which it is true are handled one at a time, in arrival order,
            by one thread of their own, so those that wait their turn hold no worker.
        listening: a socket already bound and listening (shared by several server
            processes, see :mod:`.workers`) to accept on instead of binding ``host:port``.
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
        header_timeout: float = 10.0,
        body_timeout: float = 60.0,
        park_after: float = 0.02,
        max_workers: int = 32,
        max_connections: int = 10_000,
        max_bodies: int | None = None,
        server_header: str = "mlbench-metrics",
        screen: Screen | None = None,
        serial: Serial | None = None,
        listening: socket.socket | None = None,
    ) -> None:
        self._handler = handler
        self._screen = screen
        self._serial = serial
        self._serial_work: queue.SimpleQueue[tuple[Connection, Request, bool] | None] = queue.SimpleQueue()
        self._serial_thread: threading.Thread | None = None
        self._error = error
        self._max_body = max_body
        self._bodies = BodyBudget(max_bodies if max_bodies is not None else 4 * max_body)
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._park_after = min(park_after, idle_timeout)
        self._max_workers = max_workers
        self._max_connections = max_connections
        self._server_header = server_header
        self._sock = listening if listening is not None else listen_socket(host, port)
        self._sock.setblocking(False)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[Connection] = set()
        self._to_park: list[Connection] = []
        self._work: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._exhausted_logged = False
        self._selector_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start accepting connections in the ``mlbench-server`` thread."""
        if self._selector_thread is not None:
            return
        if self._serial is not None:
            self._serial_thread = start_thread(self._serial_loop, "mlbench-server-serial")
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
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        for _ in workers:
            self._work.put(None)
        self._serial_work.put(None)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if self._serial_thread is not None:
            self._serial_thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers = list(self._open)
        for conn in leftovers:  # parked after the selector stopped watching
            self._close(conn)
        for s in (self._sock, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    @property
    def connections(self) -> int:
        """Connections open right now, busy or parked."""
        with self._lock:
            return len(self._open)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    # -- the selector thread: accept, watch parked connections -------------------

    def _select_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._sock, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            parked: set[Connection] = set()
            next_expiry = time.monotonic() + 1.0
            accept_paused_until: float | None = None
            pause = _PAUSE_MIN
            try:
                while not self._stopping.is_set():
                    timeout = 1.0
                    if accept_paused_until is not None:
                        timeout = max(0.0, min(timeout, accept_paused_until - time.monotonic()))
                    for key, _ in sel.select(timeout=timeout):
                        if key.fileobj is self._wake_r:
                            self._wake_r.recv(4096)
                        elif key.fileobj is self._sock:
                            if self._accept():
                                pause = _PAUSE_MIN
                            else:
                                sel.unregister(self._sock)
                                accept_paused_until = time.monotonic() + pause
                                pause = min(pause * 2, _PAUSE_MAX)
                        else:
                            conn = key.data
                            whole = conn.send_parked() if conn.sending else self._read_parked(conn)
                            if whole is not False:
                                parked.discard(conn)
                                sel.unregister(conn.sock)
                                if whole:
                                    self._dispatch(conn)
                                else:
                                    self._close(conn)
                    if accept_paused_until is not None and time.monotonic() >= accept_paused_until:
                        accept_paused_until = None
                        sel.register(self._sock, selectors.EVENT_READ)
                    with self._lock:
                        newly, self._to_park = self._to_park, []
                    for conn in newly:
                        try:
                            events = selectors.EVENT_WRITE if conn.sending else selectors.EVENT_READ
                            sel.register(conn.sock, events, conn)
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

    def _accept(self) -> bool:
        """Accept what waits; False when out of descriptors (the caller pauses accepting)."""
        while True:
            try:
                sock, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                if self._exhausted_logged:
                    self._exhausted_logged = False
                    _log.info("accepting connections again")
                return True
            except OSError as exc:
                if self._stopping.is_set():
                    return True
                if exc.errno in _EXHAUSTED:
                    if not self._exhausted_logged:  # once per episode, not once per attempt
                        self._exhausted_logged = True
                        _log.error(
                            "cannot accept connections: %s (%d open); pausing accept until some close",
                            exc.strerror or exc,
                            self.connections,
                        )
                    return False
                _log.warning("accept failed: %s", exc)
                return True
            self.accepted += 1  # only this thread writes it
            sock.setblocking(True)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(sock, str(addr))
            with self._lock:
                full = len(self._open) >= self._max_connections
                if not full:
                    self._open.add(conn)
            if full:
                self._send_nowait(sock, self._error(503, "too many connections"))
                sock.close()
                continue
            self._dispatch(conn)

    def _read_parked(self, conn: Connection) -> bool | None:
        """Read what a parked connection sent, without blocking.

        Returns:
            True when a worker can make progress with it, False to keep waiting, None
            when the peer closed it or it failed (the caller closes it).
        """
        try:
            data = conn.sock.recv(RECV_SIZE, socket.MSG_DONTWAIT)
            if conn.discard:  # a refused body: thrown away, then the connection closes
                return False if conn.discarded(data) else None
            conn.received(data, self._header_timeout)
        except (BlockingIOError, InterruptedError):
            return False
        except (Closed, OSError):
            return None
        return conn.ready()

    def _expire(self, sel: selectors.BaseSelector, parked: set[Connection]) -> None:
        """Close parked connections silent for ``idle_timeout``, late with their request (408),
        not reading their answer for ``idle_timeout`` or done with the time to throw a refused
        body away."""
        now = time.monotonic()
        for conn in list(parked):
            if conn.sending or conn.discard:
                if now - conn.last_active > self._idle_timeout or (conn.discard and now > (conn.deadline or 0)):
                    parked.discard(conn)
                    sel.unregister(conn.sock)
                    self._close(conn)
                continue
            late = conn.deadline is not None and now > conn.deadline
            if late or (conn.deadline is None and now - conn.last_active > self._idle_timeout):
                parked.discard(conn)
                sel.unregister(conn.sock)
                if late:
                    self._send_nowait(conn.sock, self._error(408, "the request did not arrive in time"))
                self._close(conn)

    def _park(self, conn: Connection) -> None:
        with self._lock:
            self._to_park.append(conn)
        self._wake()

    # -- workers ----------------------------------------------------------------------

    def _dispatch(self, conn: Connection) -> None:
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

    @property
    def bodies_in_flight(self) -> int:
        """Bytes of request bodies counted against ``max_bodies`` right now."""
        return self._bodies.used

    def _close(self, conn: Connection) -> None:
        self._bodies.release(conn)
        with self._lock:
            self._open.discard(conn)
        with contextlib.suppress(OSError):
            conn.sock.close()

    def _serve(self, conn: Connection) -> None:
        """Serve requests on ``conn`` until it closes, or park it when it cannot go on without waiting.

        It waits neither for a client to read (an answer that does not fit in the socket's
        buffer is parked with the rest: :meth:`_flush`) nor for bytes for longer than
        ``park_after``. While an answer is going out no further request is read, so a
        client that pipelines requests and never reads holds one answer, not a worker.
        """
        sock = conn.sock
        answered = False
        try:
            while not self._stopping.is_set():
                if conn.sending and not conn.flush():
                    self._park(conn)  # the client is not reading: the selector waits for it
                    return
                if conn.discard:
                    self._park(conn)  # the selector throws the refused body away, then closes
                    return
                if conn.close_after:
                    break
                try:
                    taken = conn.take_request(self._max_body, self._body_timeout, self._screen)
                except Refused as exc:
                    self._refused(conn, exc)
                    continue
                except BodyTooLarge as exc:
                    self._queue(conn, self._error(413, exc.message), close=True)
                    conn.refuse_body(exc.length)  # so the client gets to read the 413
                    continue
                except BadRequest as exc:
                    self._queue(conn, self._error(exc.status, exc.message), close=True)
                    continue
                if (
                    taken is None
                    and conn.head is not None
                    and not conn.reserved
                    and not self._bodies.reserve(conn, self._max_body)
                ):
                    self._queue(conn, self._error(503, "too many large request bodies at once; retry"), close=True)
                    conn.refuse_body(conn.head.length if not conn.head.chunked else self._max_body)
                    continue
                if taken is None:
                    if conn.out:  # a 100 Continue to send first
                        continue
                    if conn.deadline is not None and time.monotonic() > conn.deadline:
                        self._queue(conn, self._error(408, "the request did not arrive in time"), close=True)
                        continue
                    if (answered or conn.buf) and self._work.qsize() > 0:  # others wait for a worker: make way
                        self._park(conn)
                        return
                    sock.settimeout(self._park_after)
                    try:
                        conn.fill(self._header_timeout)
                    except (TimeoutError, socket.timeout):
                        self._park(conn)
                        return
                    continue
                request, keep_alive = taken
                if self._serial is not None and self._serial(request):
                    self._serial_work.put((conn, request, keep_alive))  # its worker is free for others
                    return
                self._answer(conn, request, keep_alive)
                answered = True
        except (Closed, OSError):
            # The peer went away, or stop() shut the socket down.
            pass
        self._close(conn)

    def _refused(self, conn: Connection, exc: Refused) -> None:
        """Answer a refused head; a body is thrown away unread, then the connection closes."""
        if exc.length == 0 and exc.keep_alive:
            self._queue(conn, exc.response, close=False)
            conn.deadline = None
            conn.scanned = 0
            return
        self._queue(conn, exc.response, close=True)
        conn.refuse_body(exc.length)

    def _answer(self, conn: Connection, request: Request, keep_alive: bool) -> None:
        """Run the handler for ``request`` and queue its answer on ``conn``."""
        try:
            response = self._handler(request)
        except Exception:
            _log.exception("unhandled error for %s %s", request.method, request.path)
            response = self._error(500, "internal server error; the server log has the details")
        self._bodies.release(conn)  # the body is answered: it no longer counts
        close = response.close or not keep_alive or self._stopping.is_set()
        self._queue(conn, response, close=close, head_only=request.method == "HEAD", v10=request.http10)
        conn.last_active = time.monotonic()

    def _serial_loop(self) -> None:
        """The ``mlbench-server-serial`` thread: requests that take turns (``serial``), one at a time."""
        while True:
            item = self._serial_work.get()
            if item is None:
                return
            conn, request, keep_alive = item
            try:
                self._answer(conn, request, keep_alive)
            except Exception:
                _log.exception("connection from %s failed", conn.client)
                self._close(conn)
                continue
            self._dispatch(conn)  # a worker sends the answer and reads what follows

    # -- answers: queued on the connection, sent without waiting for the client --------

    def _queue(
        self, conn: Connection, response: Response, *, close: bool, head_only: bool = False, v10: bool = False
    ) -> None:
        """Put ``response`` in ``conn``'s output: for HEAD, its head alone (HTTP forbids a body);
        for HTTP/1.0 (``v10``, no chunks), a streamed body ends with the connection."""
        close = close or (v10 and response.stream is not None)
        head, body = encode_response(response, self._server_header, close=close, chunked=not v10)
        stream = None if head_only else response.stream
        conn.queue(head, None if head_only else body, stream, close=close, chunked=not v10)

    def _send_nowait(self, sock: socket.socket, response: Response) -> None:
        """Best effort from the selector thread: whatever fits in the socket's buffer now."""
        head, body = encode_response(response, self._server_header, close=True)
        with contextlib.suppress(OSError):
            sock.send(head + body, socket.MSG_DONTWAIT)
