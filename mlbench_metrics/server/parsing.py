"""Reading requests: bodies (form, JSON, multipart), fields, queries and batch bodies.

Every check answers bad input with :class:`ApiFailure` (a 4xx and a JSON message), never
an exception the route did not expect. No threads, no I/O.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
from email.parser import BytesParser
from email.policy import HTTP as _HTTP_POLICY
from typing import Any, Final, Mapping
from urllib.parse import parse_qsl

from ..records import (
    BATCH_MAX,
    BatchError,
    flag_problem,
    name_problem,
    parse_date,
    parse_flag,
    text_problem,
    value_problem,
)
from ..records import (
    decode_batch as _decode_batch,
)
from ._http import Request, Response
from .store import Columns

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_BATCH",
    "RUN_NOT_FOUND",
    "ApiFailure",
    "as_bool",
    "as_date",
    "as_float",
    "as_int",
    "as_text",
    "decode_batch",
    "error_response",
    "field",
    "json_response",
    "json_text",
    "metric_name",
    "metric_value",
    "now_us",
    "parse_body",
    "path_id",
    "query",
    "secure_filename",
]

MAX_BATCH: Final = BATCH_MAX
"""Most metrics one batch may carry."""

RUN_NOT_FOUND: Final = "run_not_found"
"""The ``error`` of the batch endpoint's 404 for an unknown run (not an unknown route)."""

INT_MIN: Final = -(2**63)
"""The smallest integer SQLite stores (and so the smallest id or count we accept)."""

INT_MAX: Final = 2**63 - 1
"""The largest integer SQLite stores."""

_MAX_FORM_FIELDS: Final = 1000
# A JSON body may hold a lone surrogate only as an escape (\\udc80) or as the bytes
# CESU-8 gives one (ED A0-BF ..); bodies without either are not walked.
_MAYBE_SURROGATE: Final = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_FILENAME_STRIP_RE: Final = re.compile(r"[^A-Za-z0-9_.-]")


class ApiFailure(Exception):
    """Turns into an error answer: ``status`` and a JSON ``{"status", "message"}``."""

    def __init__(self, status: int, message: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = dict(extra or {})


def now_us() -> int:
    return time.time_ns() // 1000


def json_text(payload: Any) -> bytes:
    """``payload`` as compact UTF-8 JSON; text that cannot be UTF-8 (a lone surrogate stored
    before the server refused them) comes out escaped (``\\udcff``), never as an error."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload, separators=(",", ":")).encode("ascii")


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json_text(payload), "application/json", headers or [])


_STATUS_WORDS: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def error_response(
    status: int, message: str, extra: Mapping[str, Any] | None = None, headers: list[tuple[str, str]] | None = None
) -> Response:
    """The JSON error answer every failure gets: ``{"status", "message"}``."""
    payload: dict[str, Any] = {"status": _STATUS_WORDS.get(status, "ERROR"), "message": message}
    if extra:
        payload.update(extra)
    headers = list(headers or [])
    if status == 503 and not any(name.lower() == "retry-after" for name, _ in headers):
        headers.append(("Retry-After", "1"))
    return json_response(status, payload, headers)


def secure_filename(filename: str) -> str:
    """An ASCII-only file name safe to put in a header and on a file system."""
    filename = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
    filename = filename.replace("/", " ").replace("\\", " ")
    return _FILENAME_STRIP_RE.sub("", "_".join(filename.split())).strip("._")


# -- field parsing -----------------------------------------------------------------


def field(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise ApiFailure(400, f"field '{key}' is required")
    return data[key]


def path_id(text: str) -> int | None:
    """An id in a path (``/api/runs/{id}/...``): ASCII digits, at most 18, as an int; else None.

    Not ``str.isdigit`` alone: it accepts ``"²"``, which ``int`` refuses."""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def as_int(value: Any, key: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ApiFailure(400, f"field '{key}' must be an integer, not a boolean")
    try:
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise ApiFailure(400, f"field '{key}' must be an integer, got {str(value)[:50]!r}") from None
    if minimum is not None and number < minimum:
        raise ApiFailure(400, f"field '{key}' must be at least {minimum}, got {number}")
    if not INT_MIN <= number <= INT_MAX:
        raise ApiFailure(400, f"field '{key}' is out of range: {str(number)[:30]}")
    return number


def as_float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ApiFailure(400, f"field '{key}' must be a number, not a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiFailure(400, f"field '{key}' must be a number, got {str(value)[:50]!r}") from None
    if not math.isfinite(number):
        raise ApiFailure(400, f"field '{key}' must be a finite number, got {value!r}")
    return number


def as_bool(value: Any, key: str) -> bool:
    flag = parse_flag(value)
    if flag is None:
        raise ApiFailure(400, f"field '{key}': {flag_problem(value, key)}")
    return flag


def as_text(value: Any, key: str) -> str:
    if isinstance(value, str):
        _refuse_surrogates(value, key)
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    return str(value)


def metric_name(value: Any, key: str = "name") -> str:
    problem = name_problem(value)
    if problem is not None:
        raise ApiFailure(400, f"field '{key}': {problem}")
    return str(value)


def metric_value(value: Any, key: str = "value") -> str:
    problem = value_problem(value)
    if problem is not None:
        raise ApiFailure(400, f"field '{key}': {problem}")
    return value if isinstance(value, str) else str(value)


def as_date(value: Any, key: str = "date") -> int:
    if isinstance(value, str):
        try:
            return parse_date(value)
        except ValueError as exc:
            raise ApiFailure(400, f"field '{key}': {exc}") from None
    raise ApiFailure(400, f"field '{key}' must be a date string such as 2021-01-02 03:04:05.123456")


# -- bodies ----------------------------------------------------------------------


def parse_body(request: Request) -> dict[str, Any]:
    """The request body as a dict: form-encoded, JSON or multipart."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    body = request.body
    if not body:
        return {}
    if media in ("", "application/x-www-form-urlencoded"):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiFailure(400, "the form body is not valid UTF-8") from None
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=_MAX_FORM_FIELDS)
        except ValueError:
            raise ApiFailure(400, f"more than {_MAX_FORM_FIELDS} form fields") from None
        return dict(pairs)
    if media == "application/json" or media.endswith("+json"):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiFailure(400, f"malformed JSON body: {exc}") from None
        except RecursionError:  # a few KB of brackets reach the parser's depth limit
            raise ApiFailure(400, "malformed JSON body: nested too deeply") from None
        if not isinstance(data, dict):
            raise ApiFailure(400, "the JSON body must be an object")
        if _MAYBE_SURROGATE.search(body) is not None:
            _refuse_surrogates(data, "body")
        return data
    if media == "multipart/form-data":
        return _parse_multipart(ctype, body)
    raise ApiFailure(415, f"unsupported Content-Type {media!r}; send form, JSON or multipart data")


def _refuse_surrogates(value: Any, where: str) -> None:
    """400 for a string anywhere in ``value`` (keys included) that holds a lone surrogate."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, at = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item, f"field {at!r}")
            if problem is not None:
                raise ApiFailure(400, problem)
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, at))
                stack.append((child, str(key)[:50]))
        elif isinstance(item, list):
            stack.extend((child, at) for child in item)


def _parse_multipart(ctype: str, body: bytes) -> dict[str, Any]:
    message = BytesParser(policy=_HTTP_POLICY).parsebytes(
        b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise ApiFailure(400, "malformed multipart body")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            payload = b""
        charset = part.get_content_charset() or "utf-8"
        try:
            fields[str(name)] = payload.decode(charset)
        except (LookupError, UnicodeDecodeError):
            raise ApiFailure(400, f"multipart field {name!r} is not valid text") from None
        if len(fields) > _MAX_FORM_FIELDS:
            raise ApiFailure(400, f"more than {_MAX_FORM_FIELDS} form fields")
    return fields


def query(request: Request) -> dict[str, str]:
    # Django's QueryDict.get returns the last value of a repeated parameter.
    return dict(parse_qsl(request.query, keep_blank_values=True))


# -- batch bodies ------------------------------------------------------------------


def decode_batch(d: Mapping[str, Any]) -> tuple[Columns, int]:
    """The metrics of a batch body, in any of its three forms, checked, as columns.

    Decoding and every check are the one codec's (``records``); this only turns its
    errors into answers.
    """
    try:
        batch = _decode_batch(d)
    except BatchError as exc:
        raise ApiFailure(exc.status, str(exc)) from None
    columns: Columns = (batch.names, batch.dates_us, batch.values, batch.metadata, batch.cumulative)
    return columns, len(batch)
