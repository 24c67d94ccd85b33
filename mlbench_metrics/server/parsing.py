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
from itertools import repeat
from typing import Any, Callable, Final, Iterable, Mapping
from urllib.parse import parse_qsl

from ..records import (
    DATE_US_MAX,
    DATE_US_MIN,
    NAME_MAX,
    SERVER_VALUE_MAX,
    parse_date,
    unpack_array,
    unpack_metadata,
)
from ._http import Request, Response
from .store import Columns

__all__ = [
    "INT_MAX",
    "INT_MIN",
    "MAX_BATCH",
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
    "metric_name",
    "metric_value",
    "now_us",
    "parse_body",
    "query",
    "secure_filename",
]

MAX_BATCH: Final = 100_000
"""Most metrics one batch may carry."""

INT_MIN: Final = -(2**63)
"""The smallest integer SQLite stores (and so the smallest id or count we accept)."""

INT_MAX: Final = 2**63 - 1
"""The largest integer SQLite stores."""

_MAX_FORM_FIELDS: Final = 1000
_TRUE: Final = frozenset({"true", "t", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "f", "0", "no", "off"})
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


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(status, body, "application/json", headers or [])


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
    if status == 503:
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
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiFailure(400, f"field '{key}' must be a boolean (True/False), got {str(value)[:50]!r}")


def as_text(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    return str(value)


def metric_name(value: Any, key: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise ApiFailure(400, f"field '{key}' must be a non-empty string")
    if len(value) > NAME_MAX:
        raise ApiFailure(400, f"field '{key}' is {len(value)} characters long; the limit is {NAME_MAX}")
    return value


def metric_value(value: Any, key: str = "value") -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise ApiFailure(400, f"field '{key}' must be a number or a string")
    text = value if isinstance(value, str) else str(value)
    if len(text) > SERVER_VALUE_MAX:
        raise ApiFailure(400, f"field '{key}' is {len(text)} characters long; the limit is {SERVER_VALUE_MAX}")
    return text


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
        if not isinstance(data, dict):
            raise ApiFailure(400, "the JSON body must be an object")
        return data
    if media == "multipart/form-data":
        return _parse_multipart(ctype, body)
    raise ApiFailure(415, f"unsupported Content-Type {media!r}; send form, JSON or multipart data")


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
    """The metrics of a batch body, in any of its three forms, checked, as columns."""
    if "packed" in d:
        return _columns(_unpack(d["packed"]))
    if "columns" in d:
        return _columns(d["columns"])
    if "metrics" in d:
        return _rows(d["metrics"])
    raise ApiFailure(400, "give the metrics as 'metrics' (a list of objects), 'columns' or 'packed'")


def _rows(metrics: Any) -> tuple[Columns, int]:
    if not isinstance(metrics, list):
        raise ApiFailure(400, "field 'metrics' must be a list of objects")
    if len(metrics) > MAX_BATCH:
        raise ApiFailure(413, f"{len(metrics)} metrics in one batch; the limit is {MAX_BATCH}")
    # Fast path: pull the rows apart into columns and check those at C speed. Anything
    # unusual (a date string, a metadata object, a bad field) takes the slow path below,
    # which converts what it can and names the first bad row precisely.
    try:
        if _only(metrics, dict):
            return _columns(
                {
                    "name": [m["name"] for m in metrics],
                    "value": [m["value"] for m in metrics],
                    "date_us": [m["date_us"] for m in metrics],
                    "metadata": [m.get("metadata", "") for m in metrics],
                    "cumulative": [m.get("cumulative", False) for m in metrics],
                }
            )
    except (KeyError, ApiFailure):
        pass
    names: list[str] = []
    dates: list[int] = []
    values: list[str] = []
    metas: list[str] = []
    cums: list[bool] = []
    for i, m in enumerate(metrics):
        if not isinstance(m, dict):
            raise ApiFailure(400, f"metrics[{i}] must be an object")
        try:
            if "date_us" in m:
                date_us = m["date_us"]
                if type(date_us) is not int or not DATE_US_MIN <= date_us <= DATE_US_MAX:
                    raise ApiFailure(400, "field 'date_us' must be an integer number of microseconds since the epoch")
            else:
                date_us = as_date(field(m, "date"))
            names.append(metric_name(field(m, "name")))
            dates.append(date_us)
            values.append(metric_value(field(m, "value")))
            metas.append(as_text(m.get("metadata", ""), "metadata"))
            cums.append(as_bool(m.get("cumulative", False), "cumulative"))
        except ApiFailure as exc:
            raise ApiFailure(exc.status, f"metrics[{i}]: {exc.message}") from None
    return (names, dates, values, metas, cums), len(names)


def _unpack(packed: Any) -> dict[str, Any]:
    """The packed form (binary arrays in base64) as plain columns."""
    if not isinstance(packed, dict):
        raise ApiFailure(400, "field 'packed' must be an object")
    count = packed.get("count")
    if type(count) is not int or not 0 <= count <= MAX_BATCH:
        raise ApiFailure(
            413 if type(count) is int and count > MAX_BATCH else 400, f"packed.count must be 0 to {MAX_BATCH}"
        )
    distinct = packed.get("name")
    if not isinstance(distinct, list) or not distinct or len(distinct) > count + 1:
        raise ApiFailure(400, "packed.name must be a non-empty list of the batch's distinct names")
    try:
        if "name_index" in packed:
            index = unpack_array(
                "H" if len(distinct) < 65536 else "I", packed["name_index"], count, "packed.name_index"
            )
            if index and max(index) >= len(distinct):
                raise ValueError("packed.name_index points past packed.name")
            names = list(map(distinct.__getitem__, index))
        else:
            names = distinct * count if len(distinct) == 1 else []
            if len(distinct) != 1:
                raise ValueError("packed.name_index is required with more than one name")
        values: Any = (
            unpack_array("d", packed["value_f64"], count, "packed.value_f64")
            if "value_f64" in packed
            else packed.get("value")
        )
        if "date_ns" in packed:
            dates = [t // 1000 for t in unpack_array("q", packed["date_ns"], count, "packed.date_ns")]
        else:
            dates = unpack_array("q", packed.get("date_us"), count, "packed.date_us")
        metadata = unpack_metadata(packed.get("metadata", ""), count)
    except ValueError as exc:
        raise ApiFailure(400, str(exc)) from None
    return {
        "name": names,
        "value": values,
        "date_us": dates,
        "metadata": metadata,
        "cumulative": packed.get("cumulative", False),
    }


def _only(values: list[Any], kind: type) -> bool:
    """True when every entry is exactly of type ``kind`` (not a subclass)."""
    return set(map(type, values)) == {kind}


def _first_bad(values: list[Any], ok: Callable[[Any], bool]) -> int:
    return next(i for i, v in enumerate(values) if not ok(v))


def _columns(cols: Any) -> tuple[Columns, int]:
    """Validate a columnar batch with C-speed checks and return lazy rows.

    ``name`` and ``value`` are lists of strings; ``date_us`` a list of integer
    microseconds (or ``date``, a list of date strings); ``metadata`` and ``cumulative``
    either a list or one value for every metric.
    """
    if not isinstance(cols, dict):
        raise ApiFailure(400, "field 'columns' must be an object of lists")
    names = cols.get("name")
    values = cols.get("value")
    if not isinstance(names, list) or not isinstance(values, list):
        raise ApiFailure(400, "columns 'name' and 'value' must be lists")
    n = len(names)
    if n > MAX_BATCH:
        raise ApiFailure(413, f"{n} metrics in one batch; the limit is {MAX_BATCH}")
    if len(values) != n:
        raise ApiFailure(400, f"column 'value' has {len(values)} entries, 'name' has {n}")
    if n == 0:
        return ([], [], [], [], []), 0
    # Whole-column checks run at C speed (map/set/min/max); only on failure do we walk
    # the column in Python to name the first bad entry.
    if not _only(names, str) or not all(0 < len(x) <= NAME_MAX for x in set(names)):
        i = _first_bad(names, lambda x: type(x) is str and 0 < len(x) <= NAME_MAX)
        raise ApiFailure(400, f"columns.name[{i}]: a name must be a string of 1 to {NAME_MAX} characters")
    kinds = set(map(type, values))
    if not kinds <= {str, float, int}:
        i = _first_bad(values, lambda x: type(x) in (str, float, int))
        raise ApiFailure(400, f"columns.value[{i}] must be a number or a string")
    # Numbers are stored as they came and read back as str() of them, the text a client
    # would have sent; only text and (huge) integers can be too long.
    if str in kinds or int in kinds:
        longest = max((len(v) if type(v) is str else len(str(v)) for v in values if type(v) is not float), default=0)
        if longest > SERVER_VALUE_MAX:
            i = _first_bad(values, lambda x: type(x) is float or len(str(x)) <= SERVER_VALUE_MAX)
            raise ApiFailure(400, f"columns.value[{i}] is longer than {SERVER_VALUE_MAX} characters")
    if "date_us" in cols:
        dates = cols["date_us"]
        if not isinstance(dates, list) or len(dates) != n:
            raise ApiFailure(400, f"column 'date_us' must be a list of {n} integers")
        if not _only(dates, int) or min(dates) < DATE_US_MIN or max(dates) > DATE_US_MAX:
            i = _first_bad(dates, lambda x: type(x) is int and DATE_US_MIN <= x <= DATE_US_MAX)
            raise ApiFailure(400, f"columns.date_us[{i}] must be an integer number of microseconds since the epoch")
    elif "date" in cols:
        raw = cols["date"]
        if not isinstance(raw, list) or len(raw) != n:
            raise ApiFailure(400, f"column 'date' must be a list of {n} date strings")
        dates = [as_date(x, f"columns.date[{i}]") for i, x in enumerate(raw)]
    else:
        raise ApiFailure(400, "give a 'date_us' or a 'date' column")
    meta = cols.get("metadata", "")
    if isinstance(meta, list):
        if len(meta) != n or not _only(meta, str):
            raise ApiFailure(400, f"column 'metadata' must be a string or a list of {n} strings")
        metas: Iterable[Any] = meta
    elif isinstance(meta, str):
        metas = repeat(meta, n)
    else:
        raise ApiFailure(400, "column 'metadata' must be a string or a list of strings")
    cum = cols.get("cumulative", False)
    if isinstance(cum, list):
        if len(cum) != n or not _only(cum, bool):
            raise ApiFailure(400, f"column 'cumulative' must be a boolean or a list of {n} booleans")
        cums: Iterable[Any] = cum
    elif isinstance(cum, bool):
        cums = repeat(cum, n)
    else:
        raise ApiFailure(400, "column 'cumulative' must be a boolean or a list of booleans")
    return (names, dates, values, metas, cums), n
