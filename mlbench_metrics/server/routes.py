"""The dashboard's REST API, route by route, over :class:`~.store.Store`.

Shapes, status codes and date formats are the dashboard's (see PROTOCOL.md); where the
dashboard answers a 500 to bad input, this answers a 4xx with a JSON
``{"status", "message"}``. Extensions the dashboard lacks, detectable by clients:

* ``GET /api/metrics/batch/`` describes the batch endpoint (the dashboard 500s there);
* ``POST /api/metrics/batch/`` stores many metrics in one transaction, once per
  ``batch_id``;
* run states: ``PATCH /api/runs/{id}/`` marks a run, and a run's writers report that
  they are alive or ended (see :mod:`.run_states`; the dashboard answers 405 and 404);
* ``POST /api/pods/`` registers a pod, so pod metrics can be posted locally.

No threads are started here; the HTTP layer calls :meth:`App.handle` from its
connection threads, and the store serialises writes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Callable, Final, Protocol

from .._version import __version__
from ..client.images import official_image_names
from ..records import parse_date
from . import pages, readback, run_states, runs_table
from ._http import Request, Response
from .access import AccessPolicy
from .formats import metric_json, point_json, run_json, summarize_points, zip_metrics
from .health import PROBE_PATHS, FailureAnswers, probe_answer
from .parsing import (
    INT_MAX,
    INT_MIN,
    MAX_BATCH,
    RUN_NOT_FOUND,
    ApiFailure,
    as_bool,
    as_date,
    as_float,
    as_int,
    as_text,
    decode_batch,
    error_response,
    field,
    json_response,
    metric_name,
    metric_value,
    now_us,
    parse_body,
    query,
    secure_filename,
)
from .store import DuplicateBatch, Point, RunNotFound, Store, StoreError

__all__ = ["App", "Handler", "RunExecutor", "run_json"]

_log = logging.getLogger("mlbench_metrics.server")

_RUN_NAME_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_RUN_NAME_MAX: Final = 100
_BACKENDS: Final = ("mpi", "gloo", "nccl")

Handler = Callable[..., Response]
"""A route's handler: ``handler(request, **groups)``, the pattern's named groups as strings."""


class RunExecutor(Protocol):
    """What runs created runs (``serve --exec``): see :class:`~.executor.LocalExecutor`."""

    def check(self, run: Mapping[str, Any], *, image_is_official: bool) -> None:
        """Raise ``ValueError`` (a 400) for a run that cannot run here, before it is stored."""

    def start(self, run: Mapping[str, Any]) -> None:
        """Start the stored run in the background; never raises for the run's own failures."""

    def stop(self, run_id: int) -> None:
        """Stop the run's processes, if any."""

    def close(self) -> None:
        """Stop every run; none starts afterwards."""


@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    methods: Mapping[str, Handler]
    public: bool


class App:
    """Routes requests to handlers, after the access checks every request passes.

    Args:
        store: where runs, pods and metrics live.
        access: the Host, Origin and token rules (default: loopback names only, no token).
        executor: runs created runs as local processes (``serve --exec``), or None.
        max_body: the body limit the HTTP layer enforces, reported to clients.
        extensions: offer the routes the dashboard lacks; without them those routes
            answer as on the dashboard, so clients can be tested against its behaviour.
        writer_timeout: seconds a run's open writer may stay silent before the run reads
            as ``crashed`` (see :mod:`.run_states`).
    """

    def __init__(
        self,
        store: Store,
        *,
        access: AccessPolicy | None = None,
        executor: RunExecutor | None = None,
        max_body: int = 0,
        extensions: bool = True,
        writer_timeout: float = run_states.DEFAULT_TIMEOUT,
    ) -> None:
        self.store = store
        self.states = run_states.RunStates(store, writer_timeout)
        self.access = access or AccessPolicy()
        self.executor = executor
        self.max_body = max_body
        self.extensions = extensions
        self._official = official_image_names()
        self._routes: list[_Route] = []
        self._failures = FailureAnswers()
        if extensions:  # the web UI (public: its files carry no data) and the read-back extension
            for pattern, methods in pages.Pages().routes():
                self.add_route(pattern, methods, public=True)
            for pattern, methods in [*readback.ReadBack(store).routes(), *self.states.routes()]:
                self.add_route(pattern, methods)
            for pattern, methods in runs_table.RunsTable(store, self.states).routes():
                self.add_route(pattern, methods)
        if not extensions:
            self.add_route(r"/api/runs/(?P<pk>[^/]+)/?", {"GET": self.get_run, "DELETE": self.delete_run})
            self.add_route(r"/api/metrics/batch/?", {"GET": self.dashboard_batch_get})
            self.add_route(r"/api/pods/?", {"GET": self.list_pods})
        self.add_route(r"/api/?", {"GET": self.api_root})
        self.add_route(r"/api/runs/?", {"GET": self.list_runs, "POST": self.create_run})
        self.add_route(
            r"/api/runs/(?P<pk>[^/]+)/?",
            {"GET": self.get_run, "DELETE": self.delete_run, "PATCH": self.states.update_run},
        )
        self.add_route(r"/api/metrics/?", {"GET": self.all_metrics, "POST": self.create_metric})
        self.add_route(r"/api/metrics/batch/?", {"GET": self.batch_info, "POST": self.create_batch})
        self.add_route(r"/api/metrics/(?P<pk>[^/]+)/?", {"GET": self.get_metrics})
        self.add_route(r"/api/pods/?", {"GET": self.list_pods, "POST": self.create_pod})

    def add_route(
        self, pattern: str | re.Pattern[str], methods: Mapping[str, Handler], *, public: bool = False
    ) -> None:
        """Serve ``methods`` on paths that fully match ``pattern``; earlier routes win.

        Every route, this one included, passes :class:`AccessPolicy` first.

        Args:
            pattern: a regular expression for the whole path; named groups become the
                handler's keyword arguments.
            methods: handler by HTTP method (others get 405).
            public: no token needed, for pages that carry no data (their scripts read
                ``?token=`` and send it). Host and Origin rules apply all the same.
        """
        self._routes.append(_Route(re.compile(pattern), dict(methods), public))

    # -- dispatch ----------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request; never raises."""
        try:
            probe = probe_answer(request, self.store, self.store.db.kind, self._failures)  # before access: health.py
            if probe is not None:
                return probe
            route, match = self._route(request.path)
            refused = self.access.refuse(request, public=route is not None and route.public)
            if refused is not None:
                return refused
            if route is None or match is None:
                return error_response(404, f"no such endpoint: {request.path[:200]}")
            handler = route.methods.get(request.method)
            if handler is None:
                allowed = ", ".join(sorted(route.methods))
                detail = f'Method "{request.method[:50]}" not allowed.'
                return error_response(405, detail, {"detail": detail}, [("Allow", allowed)])
            return handler(request, **match.groupdict())
        except ApiFailure as exc:
            return error_response(exc.status, exc.message, exc.extra)
        except StoreError as exc:
            return self._failures.answer(exc)

    def screen(self, request: Request) -> Response | None:
        """The access checks on a request's head alone, before its body is read: the refusal,
        or None. The HTTP layer asks this first, so a body sent without the token (or from a
        foreign origin) is never kept in memory; :meth:`handle` checks again all the same."""
        if request.path in PROBE_PATHS:
            return None  # probes pass without a token (see health.py)
        route, _ = self._route(request.path)
        return self.access.refuse(request, public=route is not None and route.public)

    def _route(self, path: str) -> tuple[_Route | None, re.Match[str] | None]:
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is not None:
                return route, match
        return None, None

    def api_root(self, request: Request) -> Response:
        """The API root, like the dashboard's router, plus what this server is."""
        host = request.headers.get("host", "")
        base = f"http://{host}/api/" if host else "/api/"
        return json_response(
            200,
            {
                "pods": base + "pods/",
                "runs": base + "runs/",
                "metrics": base + "metrics/",
                "server": {
                    "name": "mlbench-metrics",
                    "version": __version__,
                    "extensions": ["batch", "pods", *run_states.EXTENSIONS, *readback.EXTENSIONS, "runs_table"]
                    if self.extensions
                    else [],
                    "exec": self.executor is not None,
                    **({"batch": self._batch_description()} if self.extensions else {}),
                },
            },
        )

    # -- runs --------------------------------------------------------------------

    def _run_or_404(self, pk: str) -> dict[str, Any]:
        try:
            run_id = int(pk)
        except ValueError:
            raise ApiFailure(404, f"run {pk[:50]!r} not found") from None
        if not INT_MIN <= run_id <= INT_MAX:
            raise ApiFailure(404, f"run {pk[:50]} not found")
        run = self.store.get_run(run_id)
        if run is None:
            raise ApiFailure(404, f"run {run_id} not found")
        return run

    def list_runs(self, request: Request) -> Response:
        """``GET /api/runs/``."""
        stale = self.states.stale_before()
        return json_response(200, [self._view(r, False, stale) for r in self.store.list_runs()])

    def get_run(self, request: Request, pk: str) -> Response:
        """``GET /api/runs/{id}/``."""
        return json_response(200, self._view(self._run_or_404(pk), True))

    def create_run(self, request: Request) -> Response:
        """``POST /api/runs/``: validate as the dashboard does, then store."""
        d = parse_body(request)
        name = field(d, "name")
        if not isinstance(name, str) or len(name) > _RUN_NAME_MAX or not _RUN_NAME_RE.fullmatch(name.lower()):
            raise ApiFailure(400, f"Invalid run name {name}", extra={"status": "ERROR"})
        num_workers = as_int(field(d, "num_workers"), "num_workers", minimum=1)
        num_cpus = as_float(d.get("num_cpus", 2.0), "num_cpus")
        if num_cpus <= 0:
            raise ApiFailure(400, "field 'num_cpus' must be positive")
        image = field(d, "image_name")
        gpu = as_bool(d.get("gpu_enabled", "false"), "gpu_enabled")
        if image == "custom_image":
            image = as_text(field(d, "custom_image_name"), "custom_image_name")
            command = as_text(field(d, "custom_image_command"), "custom_image_command")
            if not image:
                raise ApiFailure(400, "field 'custom_image_name' must not be empty")
        elif isinstance(image, str) and image in self._official:
            _, command, gpu_supported = self._official[image]
            gpu = gpu and gpu_supported
        else:
            known = ", ".join(sorted(self._official))
            raise ApiFailure(400, f"unknown image {str(image)[:100]!r}; use custom_image or one of: {known}")
        backend = as_text(field(d, "backend"), "backend")
        if backend == "custom_backend":
            backend = as_text(field(d, "custom_backend"), "custom_backend")
            if not backend:
                raise ApiFailure(400, "field 'custom_backend' must not be empty")
        elif backend.lower() in _BACKENDS:
            backend = backend.lower()
        else:
            raise ApiFailure(400, f"unknown backend {backend[:50]!r}; use MPI, GLOO, NCCL or custom_backend")
        fields: dict[str, Any] = {
            "name": name,
            "num_workers": num_workers,
            "cpu_limit": f"{num_cpus * 1000}m",
            "image": image,
            "command": command,
            "backend": backend,
            "run_on_all_nodes": as_bool(d.get("run_all_nodes", "false"), "run_all_nodes"),
            "gpu_enabled": gpu,
            "light_target": as_bool(d.get("light_target", "false"), "light_target"),
        }
        if self.executor is not None:
            try:
                self.executor.check(fields, image_is_official=image in self._official)
            except ValueError as exc:
                raise ApiFailure(400, str(exc)) from None
        run = self.store.create_run(now_us(), **fields)
        if self.executor is not None:
            self.executor.start(run)
        return json_response(201, self._view(run, True))

    def delete_run(self, request: Request, pk: str) -> Response:
        """``DELETE /api/runs/{id}/``: 204 with no body (the dashboard sends one)."""
        run = self._run_or_404(pk)
        if self.executor is not None:
            self.executor.stop(run["id"])
        if not self.store.delete_run(run["id"]):
            raise ApiFailure(404, f"run {run['id']} not found")
        return Response(204)

    def _view(self, run: Mapping[str, Any], with_metadata: bool, stale_before_us: int | None = None) -> dict[str, Any]:
        """A run's JSON: the dashboard's shape, with run states' additions when extensions are on."""
        if not self.extensions:
            return run_json(run, with_metadata=with_metadata)
        return self.states.view(run, with_metadata=with_metadata, stale_before_us=stale_before_us)

    # -- metrics -------------------------------------------------------------------

    def create_metric(self, request: Request) -> Response:
        """``POST /api/metrics/``: one metric for a run (``run_id``) or a pod (``pod_name``)."""
        d = parse_body(request)
        if "pod_name" in d:
            pod = self.store.get_pod(as_text(d["pod_name"], "pod_name"))
            if pod is None:
                raise ApiFailure(404, "Pod not found")
            run_id, pod_id = None, pod["id"]
        elif "run_id" in d:
            run_id, pod_id = as_int(d["run_id"], "run_id"), None
        else:
            raise ApiFailure(400, "Run ID has to be supplied", extra={"data": d})
        for key in ("name", "value", "date", "metadata", "cumulative"):
            field(d, key)
        row = (
            metric_name(d["name"]),
            as_date(d["date"]),
            metric_value(d["value"]),
            as_text(d["metadata"], "metadata"),
            as_bool(d["cumulative"], "cumulative"),
        )
        try:
            self.store.add_metric(run_id=run_id, pod_id=pod_id, row=row)
        except RunNotFound:
            raise ApiFailure(404, f"run {run_id} not found") from None
        name, date_us, value, metadata, cumulative = row
        return json_response(201, metric_json(name, (date_us, value, cumulative, metadata)))

    def dashboard_batch_get(self, request: Request) -> Response:
        """Without extensions: the dashboard's answer (it looks up a pod named "batch")."""
        return error_response(500, "AttributeError: 'NoneType' object has no attribute 'metrics'")

    def _batch_description(self) -> dict[str, Any]:
        return {"formats": ["rows", "columns", "packed"], "max_metrics": MAX_BATCH, "max_body": self.max_body}

    def batch_info(self, request: Request) -> Response:
        """``GET /api/metrics/batch/`` (extension): what the batch endpoint accepts."""
        return json_response(
            200, {"batch": True, **self._batch_description(), "server": "mlbench-metrics", "version": __version__}
        )

    def create_batch(self, request: Request) -> Response:
        """``POST /api/metrics/batch/`` (extension): many metrics, one transaction, once per id."""
        if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/json":
            raise ApiFailure(415, "the batch endpoint takes application/json")
        d = parse_body(request)
        run_id = as_int(field(d, "run_id"), "run_id")
        batch_id = d.get("batch_id")
        if batch_id is not None and (not isinstance(batch_id, str) or not 0 < len(batch_id) <= 200):
            raise ApiFailure(400, "field 'batch_id' must be a string of 1 to 200 characters")
        columns, count = decode_batch(d)
        writer = self.states.writer_of_batch(d)  # checked before anything is stored
        try:
            self.store.add_batch(run_id, batch_id, columns, count, now_us())
        except RunNotFound:  # told apart from "no such endpoint", which a client takes as "post singly"
            raise ApiFailure(404, f"run {run_id} not found", extra={"error": RUN_NOT_FOUND}) from None
        except DuplicateBatch:
            self.states.seen_in_batch(run_id, writer)
            return json_response(200, {"status": "OK", "stored": 0, "duplicate": True, "batch_id": batch_id})
        self.states.seen_in_batch(run_id, writer)
        return json_response(201, {"status": "Created", "stored": count, "duplicate": False, "batch_id": batch_id})

    def all_metrics(self, request: Request) -> Response:
        """``GET /api/metrics/``: everything, keyed by pod name and by run *name*."""
        pods = {p["id"]: p["name"] for p in self.store.list_pods()}
        runs = self.store.list_runs()
        pod_metrics: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name in pods.values()}
        by_run: dict[int, dict[str, list[dict[str, Any]]]] = {r["id"]: {} for r in runs}
        for pod_id, name, points in self.store.all_series("pod"):
            target = pod_metrics.setdefault(pods.get(pod_id, str(pod_id)), {})
            target[name] = [metric_json(name, p) for p in points]
        for run_id, name, points in self.store.all_series("run"):
            by_run.setdefault(run_id, {})[name] = [metric_json(name, p) for p in points]
        # Keyed by run name as the dashboard does: a later run overwrites an earlier namesake.
        run_metrics = {r["name"]: by_run[r["id"]] for r in runs}
        return json_response(200, {"pod_metrics": pod_metrics, "run_metrics": run_metrics})

    def get_metrics(self, request: Request, pk: str) -> Response:
        """``GET /api/metrics/{pk}/?metric_type=run|pod&since=&summarize=&metric_filter=&last_n=&format=``."""
        q = query(request)
        since = q.get("since")
        since_us = None
        if since:
            try:
                since_us = parse_date(since)
            except ValueError as exc:
                raise ApiFailure(400, f"parameter 'since': {exc}") from None
        summarize = as_int(q["summarize"], "summarize", minimum=0) if q.get("summarize") else None
        last_n = as_int(q["last_n"], "last_n", minimum=0) if q.get("last_n") else None
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
            points = summarize_points(points, summarize, last_n, name)
            if points:
                result[name] = [point_json(p) for p in points]
        return json_response(200, result)

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

        def series(owner: dict[str, int]) -> Iterator[tuple[str, list[Point]]]:
            for name, points in self.store.series(since_us=since_us, until_us=until_us, name=metric_filter, **owner):
                yield name, summarize_points(points, summarize, last_n, name)

        body = zip_metrics(((prefix, series(owner)) for prefix, owner in sources), official)
        return Response(
            200,
            body,
            "application/octet-stream",
            [("content-disposition", f"attachment; filename=metrics_{filename}.zip")],
        )

    # -- pods ------------------------------------------------------------------------

    def list_pods(self, request: Request) -> Response:
        """``GET /api/pods/``."""
        pods = self.store.list_pods()
        return json_response(
            200, [{"name": p["name"], "labels": p["labels"], "phase": p["phase"], "ip": p["ip"]} for p in pods]
        )

    def create_pod(self, request: Request) -> Response:
        """``POST /api/pods/`` (extension): register or update a pod."""
        d = parse_body(request)
        name = field(d, "name")
        if not isinstance(name, str) or not name or len(name) > 253:
            raise ApiFailure(400, "field 'name' must be a non-empty string of at most 253 characters")
        raw_run = d.get("run_id")
        run_id = None if raw_run in (None, "") else self._run_or_404(str(raw_run))["id"]
        labels = d.get("labels", "{}")
        if isinstance(labels, dict):
            labels = repr(labels)
        pod = self.store.upsert_pod(
            name,
            as_text(labels, "labels"),
            as_text(d.get("phase", "Running"), "phase"),
            as_text(d.get("ip", ""), "ip"),
            run_id,
        )
        return json_response(
            201, {"name": pod["name"], "labels": pod["labels"], "phase": pod["phase"], "ip": pod["ip"]}
        )
