"""The dashboard's REST API, route by route, over :class:`~.store.Store`.

Shapes, status codes and date formats are the dashboard's (see PROTOCOL.md); where the
dashboard answers a 500 to bad input, this answers a 4xx with a JSON
``{"status", "message"}``. Extensions the dashboard lacks, detectable by clients:

* ``GET /api/metrics/batch/`` describes the batch endpoint (the dashboard 500s there);
* ``POST /api/metrics/batch/`` stores many metrics in one transaction, once per
  ``batch_id``;
* ``PATCH /api/runs/{id}/`` with ``{"state": "finished"|"failed"|"started"}`` marks a
  run (the dashboard answers 405);
* ``POST /api/pods/`` registers a pod, so pod metrics can be posted locally.

No threads are started here; the HTTP layer calls :meth:`App.handle` from its
connection threads, and the store serialises writes.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import math
import re
import sqlite3
import time
import unicodedata
import zipfile
from email.parser import BytesParser
from email.policy import HTTP as _HTTP_POLICY
from itertools import repeat
from typing import Any, Callable, Final, Iterable, Mapping
from urllib.parse import parse_qsl

from .._version import __version__
from ..images import official_image_names
from ..records import (
    DATE_US_MAX,
    DATE_US_MIN,
    NAME_MAX,
    SERVER_VALUE_MAX,
    format_dashboard_date,
    format_iso_date,
    format_zip_date,
    parse_date,
    unpack_array,
    unpack_metadata,
)
from ._http import Request, Response
from .store import Columns, DuplicateBatch, Point, RunNotFound, Store

__all__ = ["MAX_BATCH", "ApiFailure", "App"]

_log = logging.getLogger("mlbench_metrics.server")

MAX_BATCH: Final = 100_000
"""Most metrics one batch may carry."""

_MAX_FORM_FIELDS: Final = 1000
_RUN_NAME_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_RUN_NAME_MAX: Final = 100
_BACKENDS: Final = ("mpi", "gloo", "nccl")
_TRUE: Final = frozenset({"true", "t", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "f", "0", "no", "off"})
_FILENAME_STRIP_RE: Final = re.compile(r"[^A-Za-z0-9_.-]")
_RUN_STATES: Final = ("started", "finished", "failed")


class ApiFailure(Exception):
    """Turns into an error answer: ``status`` and a JSON ``{"status", "message"}``."""

    def __init__(self, status: int, message: str, *, extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = dict(extra or {})


def _now_us() -> int:
    return time.time_ns() // 1000


def _json(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(status, body, "application/json", headers or [])


_STATUS_WORDS: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
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
    return _json(status, payload, headers)


def secure_filename(filename: str) -> str:
    """An ASCII-only file name safe to put in a header and on a file system."""
    filename = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode("ascii")
    filename = filename.replace("/", " ").replace("\\", " ")
    return _FILENAME_STRIP_RE.sub("", "_".join(filename.split())).strip("._")


# -- field parsing -----------------------------------------------------------------


def _field(data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise ApiFailure(400, f"field '{key}' is required")
    return data[key]


def _int(value: Any, key: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ApiFailure(400, f"field '{key}' must be an integer, not a boolean")
    try:
        number = value if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        raise ApiFailure(400, f"field '{key}' must be an integer, got {str(value)[:50]!r}") from None
    if minimum is not None and number < minimum:
        raise ApiFailure(400, f"field '{key}' must be at least {minimum}, got {number}")
    return number


def _float(value: Any, key: str) -> float:
    if isinstance(value, bool):
        raise ApiFailure(400, f"field '{key}' must be a number, not a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ApiFailure(400, f"field '{key}' must be a number, got {str(value)[:50]!r}") from None
    if not math.isfinite(number):
        raise ApiFailure(400, f"field '{key}' must be a finite number, got {value!r}")
    return number


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ApiFailure(400, f"field '{key}' must be a boolean (True/False), got {str(value)[:50]!r}")


def _text(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    return str(value)


def _metric_name(value: Any, key: str = "name") -> str:
    if not isinstance(value, str) or not value:
        raise ApiFailure(400, f"field '{key}' must be a non-empty string")
    if len(value) > NAME_MAX:
        raise ApiFailure(400, f"field '{key}' is {len(value)} characters long; the limit is {NAME_MAX}")
    return value


def _metric_value(value: Any, key: str = "value") -> str:
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise ApiFailure(400, f"field '{key}' must be a number or a string")
    text = value if isinstance(value, str) else str(value)
    if len(text) > SERVER_VALUE_MAX:
        raise ApiFailure(400, f"field '{key}' is {len(text)} characters long; the limit is {SERVER_VALUE_MAX}")
    return text


def _date(value: Any, key: str = "date") -> int:
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


def _query(request: Request) -> dict[str, str]:
    # Django's QueryDict.get returns the last value of a repeated parameter.
    return dict(parse_qsl(request.query, keep_blank_values=True))


# -- representations ---------------------------------------------------------------


def run_json(run: Mapping[str, Any], *, with_metadata: bool) -> dict[str, Any]:
    """A run as the dashboard's serializer shows it."""
    finished = run["finished_at"]
    return {
        "id": run["id"],
        "name": run["name"],
        "created_at": format_iso_date(run["created_at"]),
        "finished_at": None if finished is None else format_iso_date(finished),
        "state": run["state"],
        "job_id": run["job_id"],
        "job_metadata": run["job_metadata"] if with_metadata else {},
        "num_workers": run["num_workers"],
    }


def _serialized_metric(name: str, p: Point) -> dict[str, Any]:
    date_us, value, cumulative, metadata = p
    return {
        "name": name,
        "value": value,
        "date": format_dashboard_date(date_us),
        "metadata": metadata,
        "cumulative": cumulative,
    }


def _summarize(points: list[Point], summarize: int | None, last_n: int | None, name: str) -> list[Point]:
    """Average consecutive points down to at most ``summarize``, then keep the last ``last_n``.

    The dashboard drops the trailing partial group (so the newest points vanish); this
    averages it over its own size instead.
    """
    count = len(points)
    if summarize and 0 < summarize < count:
        factor = -(-count // summarize)
        out: list[Point] = []
        for start in range(0, count, factor):
            group = points[start : start + factor]
            total = 0.0
            for point in group:
                try:
                    total += float(point[1])
                except ValueError:
                    raise ApiFailure(
                        400, f"cannot summarize metric {name!r}: value {point[1][:50]!r} is not a number"
                    ) from None
            first = group[0]
            out.append((first[0], str(total / len(group)), first[2], first[3]))
        points = out
    if last_n:
        points = points[-last_n:]
    return points


class App:
    """Routes requests to handlers.

    Args:
        store: where runs, pods and metrics live.
        token: when set, every request needs ``Authorization: Bearer <token>``.
        executor: runs created runs as local processes (``serve --exec``), or None.
        max_body: the body limit the HTTP layer enforces, reported to clients.
        extensions: offer the routes the dashboard lacks; without them those routes
            answer as on the dashboard, so clients can be tested against its behaviour.
    """

    def __init__(
        self,
        store: Store,
        *,
        token: str | None = None,
        executor: Any = None,
        max_body: int = 0,
        extensions: bool = True,
    ) -> None:
        self.store = store
        self.token = token
        self.executor = executor
        self.max_body = max_body
        self.extensions = extensions
        self._official = official_image_names()
        self._routes: list[tuple[re.Pattern[str], dict[str, Callable[..., Response]]]] = [
            (re.compile(r"/api/?"), {"GET": self.api_root}),
            (re.compile(r"/api/runs/?"), {"GET": self.list_runs, "POST": self.create_run}),
            (
                re.compile(r"/api/runs/(?P<pk>[^/]+)/?"),
                {"GET": self.get_run, "DELETE": self.delete_run, "PATCH": self.update_run},
            ),
            (re.compile(r"/api/metrics/?"), {"GET": self.all_metrics, "POST": self.create_metric}),
            (re.compile(r"/api/metrics/batch/?"), {"GET": self.batch_info, "POST": self.create_batch}),
            (re.compile(r"/api/metrics/(?P<pk>[^/]+)/?"), {"GET": self.get_metrics}),
            (re.compile(r"/api/pods/?"), {"GET": self.list_pods, "POST": self.create_pod}),
        ]
        if not extensions:
            self._routes = [
                (re.compile(r"/api/runs/(?P<pk>[^/]+)/?"), {"GET": self.get_run, "DELETE": self.delete_run}),
                (re.compile(r"/api/metrics/batch/?"), {"GET": self.dashboard_batch_get}),
                (re.compile(r"/api/pods/?"), {"GET": self.list_pods}),
                *self._routes,
            ]

    # -- dispatch ----------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request; never raises."""
        try:
            if self.token is not None and not self._authorized(request):
                return error_response(
                    401, "missing or wrong bearer token", headers=[("WWW-Authenticate", 'Bearer realm="mlbench"')]
                )
            for pattern, methods in self._routes:
                match = pattern.fullmatch(request.path)
                if match is None:
                    continue
                handler = methods.get(request.method)
                if handler is None:
                    allowed = ", ".join(sorted(methods))
                    detail = f'Method "{request.method}" not allowed.'
                    return error_response(405, detail, {"detail": detail}, [("Allow", allowed)])
                return handler(request, **match.groupdict())
            return error_response(404, f"no such endpoint: {request.path}")
        except ApiFailure as exc:
            return error_response(exc.status, exc.message, exc.extra)
        except sqlite3.OperationalError as exc:
            _log.warning("database busy: %s", exc)
            return error_response(503, f"the database is busy ({exc}); try again")

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        assert self.token is not None
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token.encode())

    def api_root(self, request: Request) -> Response:
        """The API root, like the dashboard's router, plus what this server is."""
        host = request.headers.get("host", "")
        base = f"http://{host}/api/" if host else "/api/"
        return _json(
            200,
            {
                "pods": base + "pods/",
                "runs": base + "runs/",
                "metrics": base + "metrics/",
                "server": {
                    "name": "mlbench-metrics",
                    "version": __version__,
                    "extensions": ["batch", "run_state", "pods"] if self.extensions else [],
                    **({"batch": self._batch_description()} if self.extensions else {}),
                },
            },
        )

    # -- runs --------------------------------------------------------------------

    def _run_or_404(self, pk: str) -> dict[str, Any]:
        try:
            run_id = int(pk)
        except ValueError:
            raise ApiFailure(404, f"run {pk!r} not found") from None
        run = self.store.get_run(run_id)
        if run is None:
            raise ApiFailure(404, f"run {run_id} not found")
        return run

    def list_runs(self, request: Request) -> Response:
        """``GET /api/runs/``."""
        return _json(200, [run_json(r, with_metadata=False) for r in self.store.list_runs()])

    def get_run(self, request: Request, pk: str) -> Response:
        """``GET /api/runs/{id}/``."""
        return _json(200, run_json(self._run_or_404(pk), with_metadata=True))

    def create_run(self, request: Request) -> Response:
        """``POST /api/runs/``: validate as the dashboard does, then store."""
        d = parse_body(request)
        name = _field(d, "name")
        if not isinstance(name, str) or len(name) > _RUN_NAME_MAX or not _RUN_NAME_RE.fullmatch(name.lower()):
            raise ApiFailure(400, f"Invalid run name {name}", extra={"status": "ERROR"})
        num_workers = _int(_field(d, "num_workers"), "num_workers", minimum=1)
        num_cpus = _float(d.get("num_cpus", 2.0), "num_cpus")
        if num_cpus <= 0:
            raise ApiFailure(400, "field 'num_cpus' must be positive")
        image = _field(d, "image_name")
        gpu = _bool(d.get("gpu_enabled", "false"), "gpu_enabled")
        if image == "custom_image":
            image = _text(_field(d, "custom_image_name"), "custom_image_name")
            command = _text(_field(d, "custom_image_command"), "custom_image_command")
            if not image:
                raise ApiFailure(400, "field 'custom_image_name' must not be empty")
        elif isinstance(image, str) and image in self._official:
            _, command, gpu_supported = self._official[image]
            gpu = gpu and gpu_supported
        else:
            known = ", ".join(sorted(self._official))
            raise ApiFailure(400, f"unknown image {str(image)[:100]!r}; use custom_image or one of: {known}")
        backend = _text(_field(d, "backend"), "backend")
        if backend == "custom_backend":
            backend = _text(_field(d, "custom_backend"), "custom_backend")
            if not backend:
                raise ApiFailure(400, "field 'custom_backend' must not be empty")
        elif backend.lower() in _BACKENDS:
            backend = backend.lower()
        else:
            raise ApiFailure(400, f"unknown backend {backend[:50]!r}; use MPI, GLOO, NCCL or custom_backend")
        if self.executor is not None:
            try:
                self.executor.check_runnable(image_is_official=image in self._official, command=command)
            except ValueError as exc:
                raise ApiFailure(400, str(exc)) from None
        run = self.store.create_run(
            _now_us(),
            name=name,
            num_workers=num_workers,
            cpu_limit=f"{num_cpus * 1000}m",
            image=image,
            command=command,
            backend=backend,
            run_on_all_nodes=_bool(d.get("run_all_nodes", "false"), "run_all_nodes"),
            gpu_enabled=gpu,
            light_target=_bool(d.get("light_target", "false"), "light_target"),
        )
        if self.executor is not None:
            self.executor.start(run)
        return _json(201, run_json(run, with_metadata=True))

    def delete_run(self, request: Request, pk: str) -> Response:
        """``DELETE /api/runs/{id}/``: 204 with no body (the dashboard sends one)."""
        run = self._run_or_404(pk)
        if self.executor is not None:
            self.executor.stop(run["id"])
        if not self.store.delete_run(run["id"]):
            raise ApiFailure(404, f"run {run['id']} not found")
        return Response(204)

    def update_run(self, request: Request, pk: str) -> Response:
        """``PATCH /api/runs/{id}/`` (extension): mark a run started, finished or failed."""
        run = self._run_or_404(pk)
        d = parse_body(request)
        state = d.get("state")
        if state not in _RUN_STATES:
            raise ApiFailure(400, f"field 'state' must be one of {', '.join(_RUN_STATES)}")
        if state == "started":
            updated = self.store.update_run(run["id"], state=state, clear_finished=True)
        else:
            finished = run["finished_at"] if run["state"] == state and run["finished_at"] else _now_us()
            updated = self.store.update_run(run["id"], state=state, finished_at=finished)
        if updated is None:
            raise ApiFailure(404, f"run {run['id']} not found")
        return _json(200, run_json(updated, with_metadata=True))

    # -- metrics -------------------------------------------------------------------

    def create_metric(self, request: Request) -> Response:
        """``POST /api/metrics/``: one metric for a run (``run_id``) or a pod (``pod_name``)."""
        d = parse_body(request)
        if "pod_name" in d:
            pod = self.store.get_pod(_text(d["pod_name"], "pod_name"))
            if pod is None:
                raise ApiFailure(404, "Pod not found")
            run_id, pod_id = None, pod["id"]
        elif "run_id" in d:
            run_id, pod_id = _int(d["run_id"], "run_id"), None
        else:
            raise ApiFailure(400, "Run ID has to be supplied", extra={"data": d})
        for key in ("name", "value", "date", "metadata", "cumulative"):
            _field(d, key)
        row = (
            _metric_name(d["name"]),
            _date(d["date"]),
            _metric_value(d["value"]),
            _text(d["metadata"], "metadata"),
            _bool(d["cumulative"], "cumulative"),
        )
        try:
            self.store.add_metric(run_id=run_id, pod_id=pod_id, row=row)
        except RunNotFound:
            raise ApiFailure(404, f"run {run_id} not found") from None
        name, date_us, value, metadata, cumulative = row
        return _json(
            201,
            {
                "name": name,
                "value": value,
                "date": format_dashboard_date(date_us),
                "metadata": metadata,
                "cumulative": cumulative,
            },
        )

    def dashboard_batch_get(self, request: Request) -> Response:
        """Without extensions: the dashboard's answer (it looks up a pod named "batch")."""
        return error_response(500, "AttributeError: 'NoneType' object has no attribute 'metrics'")

    def _batch_description(self) -> dict[str, Any]:
        return {"formats": ["rows", "columns", "packed"], "max_metrics": MAX_BATCH, "max_body": self.max_body}

    def batch_info(self, request: Request) -> Response:
        """``GET /api/metrics/batch/`` (extension): what the batch endpoint accepts."""
        return _json(
            200, {"batch": True, **self._batch_description(), "server": "mlbench-metrics", "version": __version__}
        )

    def create_batch(self, request: Request) -> Response:
        """``POST /api/metrics/batch/`` (extension): many metrics, one transaction, once per id."""
        if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/json":
            raise ApiFailure(415, "the batch endpoint takes application/json")
        d = parse_body(request)
        run_id = _int(_field(d, "run_id"), "run_id")
        batch_id = d.get("batch_id")
        if batch_id is not None and (not isinstance(batch_id, str) or not 0 < len(batch_id) <= 200):
            raise ApiFailure(400, "field 'batch_id' must be a string of 1 to 200 characters")
        if "packed" in d:
            columns, count = _columns(_unpack(d["packed"]))
        elif "columns" in d:
            columns, count = _columns(d["columns"])
        elif "metrics" in d:
            columns, count = _rows(d["metrics"])
        else:
            raise ApiFailure(400, "give the metrics as 'metrics' (a list of objects), 'columns' or 'packed'")
        try:
            self.store.add_batch(run_id, batch_id, columns, count, _now_us())
        except RunNotFound:
            raise ApiFailure(404, f"run {run_id} not found") from None
        except DuplicateBatch:
            return _json(200, {"status": "OK", "stored": 0, "duplicate": True, "batch_id": batch_id})
        return _json(201, {"status": "Created", "stored": count, "duplicate": False, "batch_id": batch_id})

    def all_metrics(self, request: Request) -> Response:
        """``GET /api/metrics/``: everything, keyed by pod name and by run *name*."""
        pods = {p["id"]: p["name"] for p in self.store.list_pods()}
        runs = self.store.list_runs()
        pod_metrics: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in pods.values()}
        by_run: dict[int, dict[str, list[dict[str, Any]]]] = {r["id"]: {} for r in runs}
        for pod_id, name, points in self.store.all_series("pod"):
            target = pod_metrics.setdefault(pods.get(pod_id, str(pod_id)), {})
            target[name] = [_serialized_metric(name, p) for p in points]
        for run_id, name, points in self.store.all_series("run"):
            by_run.setdefault(run_id, {})[name] = [_serialized_metric(name, p) for p in points]
        # Keyed by run name as the dashboard does: a later run overwrites an earlier namesake.
        run_metrics = {r["name"]: by_run[r["id"]] for r in runs}
        return _json(200, {"pod_metrics": pod_metrics, "run_metrics": run_metrics})

    def get_metrics(self, request: Request, pk: str) -> Response:
        """``GET /api/metrics/{pk}/?metric_type=run|pod&since=&summarize=&metric_filter=&last_n=&format=``."""
        q = _query(request)
        since = q.get("since")
        since_us = None
        if since:
            try:
                since_us = parse_date(since)
            except ValueError as exc:
                raise ApiFailure(400, f"parameter 'since': {exc}") from None
        summarize = _int(q["summarize"], "summarize", minimum=0) if q.get("summarize") else None
        last_n = _int(q["last_n"], "last_n", minimum=0) if q.get("last_n") else None
        metric_filter = q.get("metric_filter") or None
        fmt = q.get("format", "json") or "json"
        if fmt not in ("json", "zip"):
            raise ApiFailure(404, f"unknown format {fmt!r}; use json or zip")
        q_opts = (metric_filter, summarize, last_n)
        # The dashboard treats a missing metric_type as "pod" and anything else as "run".
        is_pod = q.get("metric_type", "pod") == "pod"
        if is_pod:
            pod = self.store.get_pod(pk)
            if pod is None:
                raise ApiFailure(404, f"pod {pk!r} not found")
            if fmt == "zip":
                sources = [("result", {"pod_id": pod["id"]})]
                return self._zip(secure_filename(pod["name"]), sources, since_us, None, q_opts, None)
            series = self.store.series(pod_id=pod["id"], since_us=since_us, name=metric_filter)
        else:
            run = self._run_or_404(pk)
            if fmt == "zip":
                lower: int | None = run["created_at"] if since_us is None else max(since_us, run["created_at"])
                sources = [("result", {"run_id": run["id"]})]
                sources += [(p["name"], {"pod_id": p["id"]}) for p in self.store.list_pods(run_id=run["id"])]
                official = self.store.latest_value(run["id"], "TaskResult @ 0")
                return self._zip(secure_filename(run["name"]), sources, lower, run["finished_at"], q_opts, official)
            series = self.store.series(run_id=run["id"], since_us=since_us, name=metric_filter)
        result: dict[str, list[dict[str, Any]]] = {}
        for name, points in series:
            points = _summarize(points, summarize, last_n, name)
            if points:
                result[name] = [{"date": format_iso_date(p[0]), "value": p[1], "cumulative": p[2]} for p in points]
        return _json(200, result)

    def _zip(
        self,
        filename: str,
        sources: list[tuple[str, dict[str, int]]],
        since_us: int | None,
        until_us: int | None,
        options: tuple[str | None, int | None, int | None],
        official: str | None,
    ) -> Response:
        """The zip download; unlike the dashboard, ``last_n`` applies here too."""
        metric_filter, summarize, last_n = options
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_DEFLATED) as zf:
            for index, (prefix, owner) in enumerate(sources):
                series = self.store.series(since_us=since_us, until_us=until_us, name=metric_filter, **owner)
                for name, points in series:
                    if "TaskResult" in name:
                        continue
                    points = _summarize(points, summarize, last_n, name)
                    if not points:
                        continue
                    data = [{"date": format_zip_date(p[0]), "value": p[1], "cumulative": p[2]} for p in points]
                    zf.writestr(f"{prefix}_{name}.json", json.dumps(data, indent=4))
                if index == 0 and official is not None:
                    zf.writestr("official_result.txt", official)
        return Response(
            200,
            buffer.getvalue(),
            "application/octet-stream",
            [("content-disposition", f"attachment; filename=metrics_{filename}.zip")],
        )

    # -- pods ------------------------------------------------------------------------

    def list_pods(self, request: Request) -> Response:
        """``GET /api/pods/``."""
        pods = self.store.list_pods()
        return _json(
            200, [{"name": p["name"], "labels": p["labels"], "phase": p["phase"], "ip": p["ip"]} for p in pods]
        )

    def create_pod(self, request: Request) -> Response:
        """``POST /api/pods/`` (extension): register or update a pod."""
        d = parse_body(request)
        name = _field(d, "name")
        if not isinstance(name, str) or not name or len(name) > 253:
            raise ApiFailure(400, "field 'name' must be a non-empty string of at most 253 characters")
        raw_run = d.get("run_id")
        run_id = None if raw_run in (None, "") else self._run_or_404(str(raw_run))["id"]
        labels = d.get("labels", "{}")
        if isinstance(labels, dict):
            labels = repr(labels)
        pod = self.store.upsert_pod(
            name,
            _text(labels, "labels"),
            _text(d.get("phase", "Running"), "phase"),
            _text(d.get("ip", ""), "ip"),
            run_id,
        )
        return _json(201, {"name": pod["name"], "labels": pod["labels"], "phase": pod["phase"], "ip": pod["ip"]})


# -- batch bodies ------------------------------------------------------------------


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
                date_us = _date(_field(m, "date"))
            names.append(_metric_name(_field(m, "name")))
            dates.append(date_us)
            values.append(_metric_value(_field(m, "value")))
            metas.append(_text(m.get("metadata", ""), "metadata"))
            cums.append(_bool(m.get("cumulative", False), "cumulative"))
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
        dates = [_date(x, f"columns.date[{i}]") for i, x in enumerate(raw)]
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
