"""HTTP/1.1 framing: a request's head and body from a byte buffer, an answer's bytes.

Every function here looks at bytes already received and either answers (a parsed head,
a whole body), says "not yet" (None: wait for more bytes), or raises :class:`BadRequest`
with the status to answer. Nothing here reads a socket, so a connection that trickles
its request a byte at a time costs no thread while it does (see ``_http.py``).

Strict where leniency lets requests be smuggled or limits be dodged: a ``Content-Length``
is digits only, a chunk size is 1 to 16 hex digits, ``Transfer-Encoding`` other than
``chunked`` is refused, and so are both framings at once (400: RFC 9112 suggests 501
for an unknown coding, but a 5xx would say the server failed, and nothing did). No threads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, Optional
from urllib.parse import unquote, urlsplit

__all__ = [
    "MAX_HEAD",
    "BadRequest",
    "Head",
    "Request",
    "Response",
    "encode_response",
    "head_complete",
    "parse_chunked",
    "parse_head",
    "skip_blank_lines",
]

MAX_LINE: Final = 8192
"""The longest request line (414 beyond it)."""

MAX_HEADER_LINE: Final = 65536
"""The longest header line (431 beyond it)."""

MAX_HEADERS: Final = 100
"""The most header lines in one request (431 beyond)."""

MAX_HEAD: Final = 256 * 1024
"""The largest head, request line and headers together (431 beyond)."""

_HEAD_END: Final = re.compile(rb"\n\r?\n")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DIGITS: Final = re.compile(r"[0-9]{1,18}")
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: str = ""
    http10: bool = False


@dataclass
class Response:
    """One HTTP answer; ``body`` is sent as is (no body for 204 and 304).

    Attributes:
        stream: when set, the body instead: pieces of bytes made while the answer is
            sent (``Transfer-Encoding: chunked``), so that a large export never sits whole
            in memory. The server asks for the next piece only once the client has read
            the previous ones; the iterable must not hold a database cursor between pieces
            (a piece may be asked for from another thread).
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False
    stream: Optional[Iterable[bytes]] = None


class BadRequest(Exception):
    """The request cannot be served: answer ``status`` with ``message``, then close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Head:
    """A parsed request head and how its body is framed.

    Attributes:
        size: bytes the head took in the buffer, blank line included.
        chunked: the body comes in chunks; else it is ``length`` bytes.
        continue_sent: ``100 Continue`` was sent for this request (set by the server).
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    keep_alive: bool
    expect_continue: bool
    chunked: bool
    length: int
    size: int
    continue_sent: bool = False
    http10: bool = False


def skip_blank_lines(buf: bytearray) -> None:
    """Drop CR/LF before a request line (clients may send a stray one after a body)."""
    n = len(buf) - len(buf.lstrip(b"\r\n"))
    if n:
        del buf[:n]


def head_complete(buf: bytearray, start: int = 0) -> bool:
    """Whether ``buf`` holds a whole head, or enough bytes to refuse it (too long).

    Args:
        buf: bytes received for this request (blank lines before it skipped).
        start: where to start looking for the blank line (bytes before it were looked at).
    """
    if _HEAD_END.search(buf, max(0, start - 2)) is not None or len(buf) > MAX_HEAD:
        return True
    return len(buf) > MAX_LINE and buf.find(b"\n", 0, MAX_LINE + 1) < 0


def parse_head(buf: bytearray, max_body: int) -> Head | None:
    """The head at the start of ``buf``; None while it is incomplete.

    Raises:
        BadRequest: a malformed or oversized head (400, 414, 431), a body framing this
            server refuses (400), or a ``Content-Length`` over ``max_body`` sent
            with ``Expect: 100-continue`` (413: the client has not sent the body yet).
    """
    match = _HEAD_END.search(buf)
    if match is None:
        if len(buf) > MAX_HEAD:
            raise BadRequest(431, "request head too large")
        first = buf.find(b"\n", 0, MAX_LINE + 1)
        if first < 0 and len(buf) > MAX_LINE:
            raise BadRequest(414, "request line too long")
        return None
    size = match.end()
    if size > MAX_HEAD:
        raise BadRequest(431, "request head too large")
    lines = bytes(buf[: match.start() + 1]).split(b"\n")[:-1]
    request_line = lines[0]
    if len(request_line) > MAX_LINE:
        raise BadRequest(414, "request line too long")
    method, target, version = _request_line(request_line.rstrip(b"\r").decode("latin-1"))
    headers = _headers(lines[1:])
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    chunked, length = _framing(headers)
    expect_continue = "100-continue" in headers.get("expect", "").lower()
    if expect_continue and length > max_body:
        raise BadRequest(413, f"body of {length} bytes is over the limit of {max_body}")
    path, query = _split_target(target)
    http10 = version == "HTTP/1.0"
    return Head(method, path, query, headers, keep_alive, expect_continue, chunked, length, size, http10=http10)


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1] or not parts[2].startswith("HTTP/"):
        raise BadRequest(400, "malformed request line")
    return parts[0], parts[1], parts[2]


def _headers(lines: list[bytes]) -> dict[str, str]:
    if len(lines) > MAX_HEADERS:
        raise BadRequest(431, "too many request headers")
    headers: dict[str, str] = {}
    for raw in lines:
        if len(raw) > MAX_HEADER_LINE:
            raise BadRequest(431, "request header too long")
        name, sep, value = raw.rstrip(b"\r").decode("latin-1").partition(":")
        # No space before the colon, no folded lines: both let proxies and servers
        # disagree on where a header ends (request smuggling).
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header line")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _framing(headers: dict[str, str]) -> tuple[bool, int]:
    """(chunked, length) of the body the headers announce."""
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if "content-length" in headers:
            raise BadRequest(400, "both Transfer-Encoding and Content-Length")
        codings = [c.strip().lower() for c in coding.split(",")]
        if codings != ["chunked"]:
            raise BadRequest(400, f"Transfer-Encoding {coding[:50]!r} is not supported; send chunked or Content-Length")
        return True, 0
    if "content-length" in headers:
        text = headers["content-length"].strip()
        if not _DIGITS.fullmatch(text):
            raise BadRequest(400, "invalid Content-Length")
        return False, int(text)
    return False, 0


def _split_target(target: str) -> tuple[str, str]:
    if target.startswith(("http://", "https://")):
        try:
            split = urlsplit(target)
        except ValueError:
            raise BadRequest(400, "malformed request target") from None
        path, query = split.path or "/", split.query
    else:
        path, _, query = target.partition("?")
    return unquote(path), query


def parse_chunked(buf: bytearray, max_body: int) -> tuple[bytes, int] | None:
    """A chunked body at the start of ``buf``: (body, bytes it took), or None while incomplete.

    Raises:
        BadRequest: a malformed chunk (400) or a body over ``max_body`` (413).
    """
    chunks: list[bytes] = []
    total = 0
    pos = 0
    while True:
        end = buf.find(b"\n", pos, pos + MAX_LINE + 1)
        if end < 0:
            if len(buf) - pos > MAX_LINE:
                raise BadRequest(400, "chunk size line too long")
            return None
        size_text = bytes(buf[pos:end]).rstrip(b"\r").split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise BadRequest(400, "malformed chunk size")
        size = int(size_text, 16)
        pos = end + 1
        if size == 0:
            return _trailers(buf, pos, b"".join(chunks))
        total += size
        if total > max_body:
            raise BadRequest(413, f"body is over the limit of {max_body} bytes")
        if len(buf) < pos + size + 1:
            return None
        chunks.append(bytes(buf[pos : pos + size]))
        pos += size
        if buf[pos : pos + 2] == b"\r\n":
            pos += 2
        elif buf[pos : pos + 1] == b"\n":
            pos += 1
        elif len(buf) - pos < 2 and bytes(buf[pos : pos + 1]) == b"\r":
            return None
        else:
            raise BadRequest(400, "chunk data longer than its size")


def _trailers(buf: bytearray, pos: int, body: bytes) -> tuple[bytes, int] | None:
    start = pos
    while True:
        end = buf.find(b"\n", pos)
        if end < 0:
            if len(buf) - start > MAX_HEAD:
                raise BadRequest(431, "trailers too large")
            return None
        line = buf[pos:end].rstrip(b"\r")
        pos = end + 1
        if not line:
            return body, pos
        if pos - start > MAX_HEAD:
            raise BadRequest(431, "trailers too large")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def encode_response(response: Response, server: str, *, close: bool, chunked: bool = True) -> tuple[bytes, bytes]:
    """The answer's head (status line and headers) and body, ready for one write.

    204, 304 and 1xx answers carry no body whatever ``response.body`` holds. A streamed
    answer (``response.stream``) announces ``Transfer-Encoding: chunked`` (with ``chunked``;
    else, for an HTTP/1.0 client, nothing: the end of its body is the connection's) and
    returns no body here: the server frames the pieces as it sends them. Every answer says
    ``X-Content-Type-Options: nosniff``, so a browser never takes a JSON or CSV answer
    holding ``<script>`` for a page.
    """
    status = response.status
    lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Server: {server}"]
    if not any(k.lower() == "x-content-type-options" for k, _ in response.headers):
        lines.append("X-Content-Type-Options: nosniff")
    body = response.body
    if status in (204, 304) or 100 <= status < 200:
        body = b""
    elif response.stream is not None:
        lines.append(f"Content-Type: {response.content_type}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        body = b""
    else:
        lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{k}: {v}" for k, v in response.headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body
