"""The MLBench dashboard client: a drop-in replacement for ``mlbench_core.api.ApiClient``.

Code written for the upstream client works after changing only the import::

    from mlbench_metrics.api import ApiClient          # was: from mlbench_core.api import ApiClient

    with ApiClient(url="127.0.0.1:8080") as client:
        run = client.create_run("my-run", 2, image="PyTorch Cifar-10 ResNet-20", backend="MPI").result().json()
        client.post_metric(run["id"], "loss @ 0", 0.25).result()

Every upstream method keeps its signature and returns a ``concurrent.futures.Future``
whose result is a ``requests.Response``, and the bytes on the wire are what the upstream
client sends, so the real dashboard accepts them. What is better:

* one ``requests.Session`` with a keep-alive pool sized to ``max_workers``, connect and
  read timeouts on every request, and no reuse of a connection after a 204 or 304 (the
  dashboard sends a body with those, which corrupts the next answer);
* retries through tenacity under a replaceable :class:`~mlbench_metrics.RetryPolicy`,
  only where a retry is safe (see ``_retry.py``);
* :meth:`ApiClient.post_metrics`, many metrics in one call: the embedded server's batch
  endpoint when there is one, else single posts in parallel over the pool;
* clear errors (``errors.py``) instead of asserts; ``close()`` that ends within its
  timeout even while a server hangs.

Threads: the executor's worker threads (``mlbench-api_*``), started on demand by
``concurrent.futures`` and stopped by :meth:`ApiClient.close`. ``requests`` exceptions
are wrapped here and nowhere else.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import functools
import json
import logging
import re
import socket
import threading
import time
import uuid
import warnings
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Final, Iterable, Mapping, Sequence, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import requests
import urllib3
import urllib3.connection
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from ._lifecycle import at_fork_in_child
from ._retry import RETRYABLE_STATUSES, RetryableResponse, RetryPolicy, parse_retry_after
from ._threads import block_signals, signals_blocked
from ._transport import FastPoster
from ._version import __version__
from .config import ENV_TOKEN, ENV_URL, TimeoutLike, Timeouts, env_str
from .delivery import BatchFuture, BatchResult, Gather
from .errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeout,
    ClientApiError,
    ClosedError,
    ConfigError,
    DashboardWarning,
    TransientApiError,
)
from .images import MLBENCH_BACKENDS, MLBENCH_IMAGES
from .records import (
    Metric,
    MetricBatch,
    as_batch,
    batch_problem,
    check_flag,
    check_name,
    check_value,
    columns,
    format_dashboard_date,
    format_str_datetime,
    metadata_to_str,
    pack,
    parse_date,
    to_us,
    value_to_str,
)

__all__ = ["MLBENCH_BACKENDS", "MLBENCH_IMAGES", "ApiClient", "BatchResult"]

_log = logging.getLogger("mlbench_metrics.api")

_T = TypeVar("_T")

_RUN_NAME_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_FORM: Final = {"Content-Type": "application/x-www-form-urlencoded"}
_JSON: Final = {"Content-Type": "application/json"}
_BATCH_CHUNK: Final = 10_000
_BODY_PREVIEW: Final = 2000
_NO_SUCH_ROUTE: Final = (404, 405)


def _now_us() -> int:
    return time.time_ns() // 1000


# -- connections we can abort ----------------------------------------------------------


class _Tracked:
    """Mixin for urllib3 connections: remember each live one so ``close()`` can abort it."""

    registry: weakref.WeakSet[Any]

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.registry.add(self)


def _tracking_adapter(registry: weakref.WeakSet[Any], pool_size: int) -> HTTPAdapter:
    """An HTTPAdapter whose connections register in ``registry``."""
    http_conn = type("TrackedHTTPConnection", (_Tracked, urllib3.connection.HTTPConnection), {"registry": registry})
    https_conn = type("TrackedHTTPSConnection", (_Tracked, urllib3.connection.HTTPSConnection), {"registry": registry})
    http_pool = type("TrackedHTTPPool", (urllib3.HTTPConnectionPool,), {"ConnectionCls": http_conn})
    https_pool = type("TrackedHTTPSPool", (urllib3.HTTPSConnectionPool,), {"ConnectionCls": https_conn})

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    return Adapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)


def _drop_connection_after_no_content(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Close the connection after a 204 or 304 instead of returning it to the pool.

    The dashboard writes a JSON body after these answers although HTTP forbids one; on a
    reused connection those bytes become the start of the next answer.
    """
    if response.status_code in (204, 304):
        conn = getattr(response.raw, "connection", None) or getattr(response.raw, "_connection", None)
        if conn is not None:
            conn.close()


# -- errors at the one boundary --------------------------------------------------------


def _never_sent(exc: BaseException) -> bool:
    """True when the request certainly did not reach the server (refused, or no connection)."""
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError)):
            return True
        if isinstance(e, urllib3.exceptions.ConnectTimeoutError):
            return True
        for sub in (getattr(e, "reason", None), e.__cause__, e.__context__, *getattr(e, "args", ())):
            if isinstance(sub, BaseException):
                stack.append(sub)
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


def _status_error(response: requests.Response, *, transient: bool = False) -> ApiError:
    """The error a non-2xx answer means.

    ``transient`` makes any 5xx transient: for a request that is safe to repeat (a batch
    carrying its id), a server error is worth trying again later.
    """
    status = response.status_code
    request = response.request
    body = response.text[:_BODY_PREVIEW] if response.content else ""
    message = f"{request.method} {request.url} answered {status} {response.reason}"
    try:
        detail = response.json().get("message")
    except (ValueError, AttributeError):
        detail = None
    if detail:
        message += f": {detail}"
    kwargs: dict[str, Any] = {
        "status_code": status,
        "body": body,
        "method": str(request.method),
        "url": str(request.url),
        "retry_after": parse_retry_after(response.headers.get("Retry-After")),
    }
    if status in RETRYABLE_STATUSES or (transient and status >= 500):
        return TransientApiError(message, **kwargs)
    return ClientApiError(message, **kwargs)


# -- the client ----------------------------------------------------------------------


class ApiClient:
    """Client for the MLBench master/dashboard REST API.

    Example::

        with ApiClient(url="127.0.0.1:8080") as client:
            runs = client.get_runs().result().json()
            result = client.post_metrics(run_id, [Metric("loss @ 0", 0.25)]).result()

    In a cluster it uses the master pod's IP; outside, it finds the master service and
    reaches it according to its type. ``url`` (or ``MLBENCH_METRICS_URL``) overrides
    discovery. Results come as ``concurrent.futures.Future`` objects wrapping
    ``requests.Response`` objects, as upstream.

    Args:
        max_workers: threads that run requests, and the size of the connection pool.
        in_cluster: whether this runs inside the Kubernetes cluster.
        label_selector: selects the master pod (and, out of cluster, its service).
        k8s_namespace: the namespace the master pod runs in.
        url: ``host:port[/path]`` (http, as upstream) or a full ``http(s)://`` URL of the
            dashboard's root; skips discovery.
        load_config: load the Kubernetes configuration before discovery.
        service_name: out of cluster, the master service's name, instead of searching by
            ``label_selector`` (documented upstream, implemented here).
        timeout: connect and read timeouts for every request (see :class:`Timeouts`).
        retry: the retry policy; ``RetryPolicy.none()`` fails fast.
        token: a bearer token for every request (or ``MLBENCH_METRICS_TOKEN``).
        session: a ``requests.Session`` to use instead of the client's own; the client
            then neither resizes its pool nor can abort its requests on ``close()``.
        strict: refuse, with ``ValueError`` at the call, what the dashboard would refuse
            or alter (a run name with ``_``, no backend, a metric name over 50
            characters, an unparseable date, ...). By default such calls are sent as
            ``mlbench_core.api.ApiClient`` sends them, with a :class:`DashboardWarning`
            naming what the dashboard will do, so code written for it keeps working.

    Raises:
        DiscoveryError: no ``url`` was given and the dashboard cannot be found.
        ConfigError: an argument is invalid.
    """

    def __init__(
        self,
        max_workers: int = 5,
        in_cluster: bool = True,
        label_selector: str = "component=master,app=mlbench",
        k8s_namespace: str = "default",
        url: str | None = None,
        load_config: bool = True,
        service_name: str | None = None,
        *,
        timeout: TimeoutLike = None,
        retry: RetryPolicy | None = None,
        token: str | None = None,
        session: requests.Session | None = None,
        strict: bool = False,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"max_workers must be a positive integer, got {max_workers!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self.in_cluster = in_cluster
        self.port: int | None = None
        self.strict = bool(strict)
        self.max_workers = max_workers
        self.timeouts = Timeouts.of(timeout)
        self.retry_policy = retry or RetryPolicy()
        self._token = token if token is not None else env_str(ENV_TOKEN)
        self._own_session = session is None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._pending: set[Future[Any]] = set()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._batch_supported: bool | None = None
        self._batch_limit = _BATCH_CHUNK
        self._packed = False
        self._extensions: frozenset[str] | None = None

        if url is None:
            url = env_str(ENV_URL)
        if url is None:
            from .discovery import discover

            found = discover(
                in_cluster=in_cluster,
                label_selector=label_selector,
                namespace=k8s_namespace,
                service_name=service_name,
                load_config=load_config,
            )
            url, self.port = found.address, found.port
        self.endpoint = self._endpoint(url)
        self.executor = _new_executor(max_workers)
        self._session = session if session is not None else self._new_session()
        self._session.hooks.setdefault("response", []).append(_drop_connection_after_no_content)
        self._fast = self._new_fast_poster()
        at_fork_in_child(self._after_fork_in_child)

    # -- construction ------------------------------------------------------------------

    @staticmethod
    def _endpoint(url: str) -> str:
        if not isinstance(url, str) or not url.strip():
            raise ConfigError(f"url must be 'host:port[/path]' or an http(s) URL, got {url!r}")
        url = url.strip().rstrip("/")
        if "://" not in url:
            endpoint = f"http://{url}/api/"
        elif not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must use http or https, got {url!r}")
        else:
            endpoint = f"{url}/api/"
        try:
            parts = urlsplit(endpoint)
            _ = parts.port  # parsing it is the check: a port out of range, or not a number
        except ValueError as exc:
            raise ConfigError(f"url {url!r} is not a valid address: {exc}") from None
        if not parts.hostname:
            raise ConfigError(f"url {url!r} names no host; expected 'host:port[/path]' or an http(s) URL")
        return endpoint

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        adapter = _tracking_adapter(self._connections, self.max_workers)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Resolve proxies and CA bundles from the environment once, not on every call
        # (with trust_env, requests re-reads the environment and ~/.netrc per request).
        settings = session.merge_environment_settings(self.endpoint, {}, None, None, None)
        session.proxies.update(settings.get("proxies") or {})
        session.verify = settings.get("verify", True)
        session.trust_env = False
        session.headers["User-Agent"] = f"mlbench-metrics/{__version__}"
        if self._token:
            session.headers["Authorization"] = f"Bearer {self._token}"
        return session

    def _new_fast_poster(self) -> FastPoster | None:
        """The lean path for batch posts, when nothing needs what only requests offers."""
        scheme = self.endpoint.split("://", 1)[0]
        proxies = self._session.proxies
        if not self._own_session or proxies.get(scheme) or proxies.get("all"):
            return None
        headers = {k: str(v) for k, v in self._session.headers.items() if k in ("User-Agent", "Authorization")}
        verify = self._session.verify if isinstance(self._session.verify, (bool, str)) else True
        return FastPoster(self.endpoint, headers, self.timeouts, verify, self._connections)

    def _after_fork_in_child(self) -> None:
        # The child has none of the parent's threads, and its sockets are shared with the
        # parent: start over with a fresh executor and pool, without closing anything.
        self._lock = threading.Lock()
        self._pending = set()
        self._connections = weakref.WeakSet()
        self.executor = _new_executor(self.max_workers)
        if self._own_session:
            self._session = self._new_session()
            self._session.hooks.setdefault("response", []).append(_drop_connection_after_no_content)
        self._fast = self._new_fast_poster()

    # -- plumbing ------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> Future[_T]:
        if self._closed.is_set():
            raise ClosedError("this ApiClient is closed")
        with signals_blocked():  # a worker started here inherits the mask: SIGTERM stays the main thread's
            future = self.executor.submit(fn, *args, **kwargs)
        if isinstance(future, Future):
            with self._lock:
                self._pending.add(future)
            future.add_done_callback(self._forget)
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _attempt(
        self, method: str, url: str, params: Any, body: bytes | None, headers: Mapping[str, str] | None
    ) -> requests.Response:
        """Send once; wrap ``requests`` errors; raise on a "try again" status."""
        if self._fast is not None and method == "POST" and url.endswith("metrics/batch/") and body is not None:
            response = self._fast.post("metrics/batch/", body, _JSON["Content-Type"])
            if response.status_code in RETRYABLE_STATUSES:
                error = _status_error(response)
                assert isinstance(error, TransientApiError)
                raise RetryableResponse(response, error)
            return response
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                data=body,
                headers=headers,
                timeout=self.timeouts.as_tuple(),
                allow_redirects=method != "POST",  # a redirected POST must be seen, not turned into a GET
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise ApiTimeout(f"{method} {url}: connecting timed out", sent=False, method=method, url=url) from exc
        except requests.exceptions.Timeout as exc:
            raise ApiTimeout(f"{method} {url}: no answer in time ({_describe(exc)})", method=method, url=url) from exc
        except requests.exceptions.ConnectionError as exc:
            raise ApiConnectionError(
                f"{method} {url}: {_describe(exc)}", sent=not _never_sent(exc), method=method, url=url
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise ClientApiError(f"{method} {url}: {_describe(exc)}", method=method, url=url) from exc
        if response.status_code in RETRYABLE_STATUSES:
            error = _status_error(response)
            assert isinstance(error, TransientApiError)
            raise RetryableResponse(response, error)
        return response

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> requests.Response:
        """One call with retries; returns the last answer whatever its status."""
        try:
            return self.retry_policy.call(
                self._attempt,
                method,
                self.endpoint + path,
                params,
                body,
                headers,
                idempotent=idempotent,
                stop_event=self._closed,
            )
        except RetryableResponse as exc:
            return exc.response

    def _request(self, method: str, path: str, **kwargs: Any) -> Future[requests.Response]:
        idempotent = kwargs.pop("idempotent", method in ("GET", "DELETE", "HEAD"))
        return self._submit(self._call, method, path, idempotent=idempotent, **kwargs)

    def _refuse_or_warn(self, what: str, problems: list[str], *, depth: int = 1) -> None:
        """Raise (strict) or warn about what the dashboard will refuse or alter in a call.

        Upstream sends such calls without a word and lets the dashboard answer; code
        written for it (and its test suites) expects a Future, so by default the call is
        sent and the warning says what will become of it.

        Args:
            what: the public method.
            problems: what is wrong, each with what the dashboard will do.
            depth: calls between the caller's line and this method (1: called by the
                public method itself), so the warning points at the caller's line.
        """
        if not problems:
            return
        text = f"{what}: " + "; ".join(problems)
        if self.strict:
            raise ValueError(text)
        warnings.warn(
            f"{text}. Sent as mlbench_core's ApiClient sends it (ApiClient(strict=True) refuses it instead)",
            DashboardWarning,
            stacklevel=2 + depth,
        )

    # -- upstream API: metrics -------------------------------------------------------------

    def get_all_metrics(self) -> Future[requests.Response]:
        """Get all metrics ever recorded by the master node.

        Returns:
            A Future of the ``requests.Response``; ``.result().json()`` is
            ``{"pod_metrics": {...}, "run_metrics": {...}}``.
        """
        return self._request("GET", "metrics/")

    def get_run_metrics(
        self,
        run_id: Any,
        since: _dt.datetime | str | None = None,
        summarize: int | None = None,
        metric_filter: str | None = None,
        last_n: int | None = None,
    ) -> Future[requests.Response]:
        """Get all metrics of a run.

        Args:
            run_id: the run's id.
            since: only metrics at or after this date (a naive datetime is UTC).
            summarize: average consecutive points down to at most this many per metric.
            metric_filter: only the metric with exactly this name.
            last_n: only the last ``last_n`` points of each metric.

        Returns:
            A Future of the ``requests.Response``; ``.result().json()`` maps each metric
            name to its points ``[{"date", "value", "cumulative"}, ...]``.

        Raises:
            ValueError: ``since`` is not a date the dashboard can parse.
        """
        return self._get_filtered_metrics(
            run_id=run_id, since=since, summarize=summarize, metric_filter=metric_filter, last_n=last_n
        )

    def get_pod_metrics(
        self, pod_id: str, since: _dt.datetime | str | None = None, summarize: int | None = None
    ) -> Future[requests.Response]:
        """Get all metrics of a worker pod (by the pod's name).

        Returns:
            A Future of the ``requests.Response``.
        """
        return self._get_filtered_metrics(pod_id=pod_id, since=since, summarize=summarize)

    def download_run_metrics(
        self, run_id: Any, since: _dt.datetime | str | None = None, summarize: int | None = None
    ) -> Future[requests.Response]:
        """Get all metrics of a run as a zip file (``.result().content``).

        Returns:
            A Future of the ``requests.Response``.
        """
        return self._get_filtered_metrics(run_id=run_id, since=since, summarize=summarize, format="zip")

    def _get_filtered_metrics(
        self,
        pod_id: str | None = None,
        run_id: Any = None,
        since: _dt.datetime | str | None = None,
        summarize: int | None = None,
        metric_filter: str | None = None,
        last_n: int | None = None,
        format: str | None = None,
    ) -> Future[requests.Response]:
        if pod_id is None and run_id is None:
            raise ValueError("either pod_id or run_id must be given")
        pk, metric_type = (pod_id, "pod") if pod_id is not None else (run_id, "run")
        params: dict[str, str] = {"metric_type": metric_type}
        problems: list[str] = []
        if since is not None:
            params["since"] = _sent(_since, since, problems, _REFUSED)
        if format is not None:
            params["format"] = format
        if summarize is not None:
            params["summarize"] = _sent(_count_text("summarize"), summarize, problems, _BAD_COUNT)
        if metric_filter is not None:
            params["metric_filter"] = str(metric_filter)
        if last_n is not None:
            params["last_n"] = _sent(_count_text("last_n"), last_n, problems, _BAD_COUNT)
        call = "get_pod_metrics" if pod_id is not None else "download_run_metrics" if format else "get_run_metrics"
        self._refuse_or_warn(call, problems, depth=2)
        return self._request("GET", f"metrics/{quote(str(pk), safe='')}/", params=params)

    def post_metric(
        self,
        run_id: Any,
        name: str,
        value: Any,
        cumulative: bool = False,
        metadata: Any = "",
        date: _dt.datetime | str | int | None = None,
    ) -> Future[requests.Response]:
        """Save one metric of a run on the master node.

        Args:
            run_id: the run's id.
            name: the metric's name, e.g. ``"accuracy @ 0"`` (at most 50 characters).
            value: the value; sent as ``str(value)`` (NaN and infinities kept).
            cumulative: whether the value is a running total.
            metadata: free text; a mapping is sent as JSON text (upstream sent its keys).
            date: when it was measured (a naive datetime is UTC); default now.

        Returns:
            A Future of the ``requests.Response`` (201 with the stored metric).

        Raises:
            ValueError: with ``strict=True``, the name, value, date or ``cumulative`` is
                one the dashboard would refuse or alter (``cumulative`` given as text is parsed:
                ``"False"`` is false). Otherwise such a metric is
                sent as upstream sends it, with a :class:`DashboardWarning`.
        """
        problems: list[str] = []
        name_text = _sent(check_name, name, problems, _BEYOND_SCHEMA if name else _REFUSED)
        body = _form(
            (
                ("run_id", run_id),
                ("name", None if name is None else name_text),  # None is left out, as upstream's requests does
                ("cumulative", _sent(_cumulative_text, cumulative, problems, _REFUSED)),
                ("date", _sent(_date_text, date, problems, _REFUSED)),
                ("value", _sent(_value_text, value, problems, _BEYOND_SCHEMA)),
                ("metadata", metadata_to_str(metadata)),
            )
        )
        self._refuse_or_warn("post_metric", problems)
        return self._request("POST", "metrics/", body=body, headers=_FORM)

    # -- upstream API: runs and pods -----------------------------------------------------

    def get_runs(self) -> Future[requests.Response]:
        """Get all active, finished and failed benchmark runs.

        Returns:
            A Future of the ``requests.Response``; ``.result().json()`` is a list of runs.
        """
        return self._request("GET", "runs/")

    def get_run(self, run_id: Any) -> Future[requests.Response]:
        """Get one benchmark run, with its ``job_metadata``.

        Returns:
            A Future of the ``requests.Response``.
        """
        return self._request("GET", f"runs/{quote(str(run_id), safe='')}/")

    def create_run(
        self,
        name: str,
        num_workers: int,
        num_cpus: float = 2.0,
        max_bandwidth: int = 1000,
        image: str | None = None,
        backend: str | None = None,
        custom_image_name: str | None = None,
        custom_image_command: str | None = None,
        custom_backend: str | None = None,
        run_all_nodes: bool = False,
        gpu_enabled: bool = False,
        light_target: bool = False,
    ) -> Future[requests.Response]:
        """Create a new benchmark run.

        Args:
            name: the run's name (a Kubernetes name: letters, digits and ``-``).
            num_workers: the number of worker nodes.
            num_cpus: CPU cores per worker.
            max_bandwidth: bandwidth between workers in Mbit/s (the dashboard ignores it).
            image: an official benchmark, a key of :data:`MLBENCH_IMAGES`.
            backend: one of :data:`MLBENCH_BACKENDS` (any case).
            custom_image_name: a Docker image to run instead of an official one.
            custom_image_command: the command to run in it.
            custom_backend: a backend outside :data:`MLBENCH_BACKENDS`.
            run_all_nodes: run the custom command on every worker, not only rank 0.
            gpu_enabled: use GPUs.
            light_target: use the light target goal.

        Returns:
            A Future of the ``requests.Response`` (201 with the run).

        Raises:
            ValueError: the image is not one of :data:`MLBENCH_IMAGES` (and no custom
                image is given), or both ``backend`` and ``custom_backend`` are given, as
                upstream refuses them; with ``strict=True`` also a name or backend the
                dashboard refuses. Otherwise such a run is sent as upstream sends it (a
                backend it does not know is left out), with a :class:`DashboardWarning`.
        """
        problems: list[str] = []
        data: dict[str, Any] = {
            "name": _sent(_check_run_name, name, problems, _RUN_REFUSED),
            "num_workers": num_workers,
            "num_cpus": num_cpus,
            "max_bandwidth": max_bandwidth,
            "gpu_enabled": "true" if gpu_enabled else "false",
            "light_target": "true" if light_target else "false",
            "run_all_nodes": "true" if run_all_nodes else "false",
        }
        if custom_image_name is not None:
            data["image_name"] = "custom_image"
            data["custom_image_name"] = custom_image_name
            data["custom_image_command"] = custom_image_command
        elif image in MLBENCH_IMAGES:
            data["image_name"] = MLBENCH_IMAGES[image][0]
        else:
            known = ", ".join(repr(k) for k in MLBENCH_IMAGES)
            raise ValueError(f"image {image!r} not found; use custom_image_name or one of {known}")
        if custom_backend is not None and backend is not None:
            raise ValueError("custom_backend and backend are mutually exclusive")
        if custom_backend is not None:
            data["backend"] = "custom_backend"
            data["custom_backend"] = custom_backend
        elif isinstance(backend, str) and backend.upper() in MLBENCH_BACKENDS:
            data["backend"] = backend.upper()
        else:  # upstream leaves it out
            problems.append(
                f"backend {backend!r} is not one of {MLBENCH_BACKENDS} (for another, pass custom_backend): "
                f"it is left out, and {_REFUSED}"
            )
        self._refuse_or_warn("create_run", problems)
        return self._request("POST", "runs/", body=_form(data.items()), headers=_FORM)

    def delete_run(self, run_id: Any) -> Future[requests.Response]:
        """Delete a benchmark run and its metrics.

        Returns:
            A Future of the ``requests.Response`` (204).
        """
        return self._request("DELETE", f"runs/{quote(str(run_id), safe='')}/")

    def get_worker_pods(self) -> Future[requests.Response]:
        """Get information on all worker pods.

        Returns:
            A Future of the ``requests.Response``.
        """
        return self._request("GET", "pods/")

    # -- extensions ----------------------------------------------------------------------

    def set_run_state(self, run_id: Any, state: str) -> Future[requests.Response]:
        """Mark a run ``"started"``, ``"finished"`` or ``"failed"`` (sets ``finished_at``).

        Needs the embedded server (``PATCH /api/runs/{id}/``); the dashboard answers 405.

        Returns:
            A Future of the ``requests.Response``.
        """
        if state not in ("started", "finished", "failed"):
            raise ValueError(f"state must be 'started', 'finished' or 'failed', got {state!r}")
        body = json.dumps({"state": state}).encode()
        return self._request("PATCH", f"runs/{quote(str(run_id), safe='')}/", body=body, headers=_JSON, idempotent=True)

    def get_server_info(self) -> Future[requests.Response]:
        """``GET /api/``: the API root; the embedded server describes itself under ``"server"``.

        Returns:
            A Future of the ``requests.Response``; the dashboard lists its routes, the
            embedded server adds ``{"server": {"name", "version", "extensions", "exec", ...}}``.
        """
        return self._request("GET", "")

    def set_run_config(self, run_id: Any, config: Mapping[str, Any]) -> Future[requests.Response]:
        """Store a run's configuration (hyperparameters), replacing what was stored.

        Needs the embedded server's ``run_config`` extension (``PUT /api/runs/{id}/config/``);
        the dashboard has no place for it and answers 404.

        Returns:
            A Future of the ``requests.Response``.
        """
        body = json.dumps({"config": dict(config)}, allow_nan=False).encode()
        return self._request(
            "PUT", f"runs/{quote(str(run_id), safe='')}/config/", body=body, headers=_JSON, idempotent=True
        )

    def get_run_config(self, run_id: Any) -> Future[requests.Response]:
        """Get a run's configuration: ``.result().json()["config"]`` (the ``run_config`` extension).

        Returns:
            A Future of the ``requests.Response``.
        """
        return self._request("GET", f"runs/{quote(str(run_id), safe='')}/config/")

    def get_run_series(self, run_id: Any) -> Future[requests.Response]:
        """List a run's series without their points (the ``points`` extension).

        Returns:
            A Future of the ``requests.Response``; ``.result().json()["series"]`` holds
            ``{"name", "metric", "rank", "count", "first_us", "last_us", "cumulative", "has_step"}``.
        """
        return self._request("GET", f"runs/{quote(str(run_id), safe='')}/series/")

    def get_run_points(
        self,
        run_id: Any,
        *,
        names: Sequence[str] | None = None,
        metrics: Sequence[str] | None = None,
        since: _dt.datetime | str | None = None,
        until: _dt.datetime | str | None = None,
        after: int | None = None,
        max_points: int | None = None,
        fields: Sequence[str] | None = None,
        format: str | None = None,
    ) -> Future[requests.Response]:
        """Get a run's points with step, epoch, rank and metadata (the ``points`` extension).

        Args:
            run_id: the run's id.
            names: only the series with exactly these names.
            metrics: only these metrics, each with all its ranks (``"loss"`` selects
                ``"loss @ 0"`` and ``"loss @ 1"``).
            since: only points at or after this date.
            until: only points at or before this date.
            after: only points that arrived after this ``cursor`` of an earlier answer.
            max_points: downsample each series to at most this many points (the minimum
                and maximum of each time bucket are kept).
            fields: the per-point columns, of ``date_us, step, epoch, rank, value,
                cumulative, metadata`` (default all).
            format: ``"columns"`` (default: JSON columns per series), ``"csv"`` or
                ``"json"`` (one row per point, for files).

        Returns:
            A Future of the ``requests.Response``; see the server's ``readback`` module
            for the answer's shape.

        Raises:
            ValueError: a date is not one the server can parse, or a number is negative.
        """
        params: list[tuple[str, str]] = [("name", n) for n in names or ()]
        params += [("metric", m) for m in metrics or ()]
        if since is not None:
            params.append(("since", _since(since)))
        if until is not None:
            params.append(("until", _since(until)))
        if after is not None:
            params.append(("after", str(_non_negative_int(after, "after"))))
        if max_points is not None:
            params.append(("max_points", str(_non_negative_int(max_points, "max_points"))))
        if fields is not None:
            params.append(("fields", ",".join(fields)))
        if format is not None:
            params.append(("format", format))
        return self._request("GET", f"runs/{quote(str(run_id), safe='')}/points/", params=params)

    def server_extensions(self) -> frozenset[str]:
        """The extensions the server lists at its API root (none for the dashboard); asks once.

        Raises:
            ApiError: the server could not be asked (the next call asks again).
        """
        if self._extensions is None:
            response = self._call("GET", "", idempotent=True)
            if response.status_code != 200:
                raise _status_error(response, transient=True)
            try:
                info = response.json()
            except ValueError:
                info = None
            server = info.get("server") if isinstance(info, dict) else None
            names = server.get("extensions") if isinstance(server, dict) else None
            self._extensions = frozenset(n for n in names or () if isinstance(n, str))
        return self._extensions

    @property
    def batch_supported(self) -> bool | None:
        """Whether the server has the batch endpoint: None until the first ``post_metrics``."""
        return self._batch_supported

    def post_metrics(
        self,
        run_id: int,
        metrics: MetricBatch | Sequence[Metric | Mapping[str, Any]],
        *,
        batch_id: str | None = None,
    ) -> BatchFuture:
        """Store many metrics of one run in one call.

        Uses the embedded server's batch endpoint when the server has one (asked once,
        then remembered): one request, one transaction, stored once per ``batch_id`` even
        when sent again. Otherwise (the dashboard, or a 404/405 from the endpoint) each
        metric is a single post, in parallel over the pool, and the future can tell at
        any moment which of them are stored (:meth:`BatchFuture.partial`).

        Args:
            run_id: the run's id.
            metrics: a :class:`MetricBatch`, or :class:`Metric` objects or mappings with
                their fields (``name``, ``value``, ``date``, ``metadata``, ``cumulative``).
            batch_id: the idempotency key; default the batch's own, else a new one.

        Returns:
            A Future of the :class:`BatchResult`; failures are in the result, not raised.

        Raises:
            TypeError, ValueError: a metric is malformed (nothing is sent).
        """
        batch = as_batch(metrics, _now_us())
        problem = batch_problem(batch)
        if problem is not None:
            raise ValueError(problem)
        if self._closed.is_set():
            raise ClosedError("this ApiClient is closed")
        key = batch_id or batch.batch_id or uuid.uuid4().hex
        outer = BatchFuture(len(batch), key)
        if not len(batch):
            outer.set_result(BatchResult(0, 0, batch_id=key))
        elif self._batch_supported is False:
            self._fan_out(run_id, batch, outer)
        else:
            self._submit(self._deliver_batch, run_id, batch, key, outer)
        return outer

    def _probe_batch(self) -> bool:
        """Ask once whether the server has the batch endpoint, and remember the answer.

        The API root tells: the embedded server describes itself and its batch endpoint
        there, the dashboard lists its routes (or has no root: 404). Only a definitive
        answer is remembered; an error (a flaky proxy, a restart) is raised, and the
        next call asks again.
        """
        response = self._call("GET", "", idempotent=True)
        if response.status_code in _NO_SUCH_ROUTE:
            info = None
        elif response.status_code != 200:
            raise _status_error(response, transient=True)
        else:
            try:
                info = response.json()
            except ValueError:
                info = None
        server = info.get("server") if isinstance(info, dict) else None
        batch = server.get("batch") if isinstance(server, dict) else None
        if isinstance(batch, dict):
            self._batch_limit = max(1, min(_BATCH_CHUNK, int(batch.get("max_metrics", _BATCH_CHUNK))))
            self._packed = "packed" in (batch.get("formats") or [])
        self._use_batches(isinstance(batch, dict))
        return bool(self._batch_supported)

    def _use_batches(self, supported: bool) -> None:
        self._batch_supported = supported
        _log.debug("batch endpoint %s at %s", "found" if supported else "not found", self.endpoint)

    def _deliver_batch(self, run_id: int, batch: MetricBatch, key: str, outer: BatchFuture) -> None:
        try:
            if self._batch_supported is None and not self._probe_batch():
                self._fan_out(run_id, batch, outer)
                return
            result = self._post_batch(run_id, batch, key)
            if result is None:  # the server has no such endpoint after all
                self._use_batches(False)
                self._fan_out(run_id, batch, outer)
                return
            outer.set_result(result)
        except ApiError as exc:
            outer.set_result(BatchResult(len(batch), 0, failed=dict.fromkeys(range(len(batch)), exc), batch_id=key))
        except BaseException as exc:
            outer.set_exception(exc)

    def _post_batch(self, run_id: int, batch: MetricBatch, key: str) -> BatchResult | None:
        """Post ``batch`` to the batch endpoint (in parts past its limit); None when the
        server answers that it has no such endpoint (404, 405) to the first part."""
        n = len(batch)
        limit = self._batch_limit
        stored = 0
        duplicate = False
        failed: dict[int, ApiError] = {}
        for start in range(0, n, limit):
            part = batch if n <= limit else batch.subset(range(start, min(n, start + limit)))
            part_key = key if n <= limit else f"{key}:{start // limit}"
            form, payload = ("packed", pack(part)) if self._packed else ("columns", columns(part))
            body = json.dumps({"run_id": run_id, "batch_id": part_key, form: payload}).encode()
            try:
                response = self._call("POST", "metrics/batch/", body=body, headers=_JSON, idempotent=True)
            except ApiError as exc:
                failed.update(dict.fromkeys(range(start, start + len(part)), exc))
                continue
            if response.status_code in (200, 201):
                answer = response.json()
                stored += int(answer.get("stored", 0))
                duplicate = duplicate or bool(answer.get("duplicate"))
            elif response.status_code in _NO_SUCH_ROUTE and start == 0:
                return None
            else:  # a 5xx is worth another try later: the batch id makes re-sending safe
                error = _post_error(response, transient=True)
                failed.update(dict.fromkeys(range(start, start + len(part)), error))
        return BatchResult(n, stored, duplicate, failed, key)

    def _fan_out(self, run_id: int, batch: MetricBatch, outer: BatchFuture) -> None:
        """One single post per metric, in parallel; ``outer`` tells which are stored."""
        gather = Gather(outer)
        for index, (name, value, date_us, metadata, cumulative) in enumerate(
            zip(batch.names, batch.values, batch.dates_us, batch.metadata_texts(), batch.cumulative)
        ):
            body = _form(
                (
                    ("run_id", run_id),
                    ("name", name),
                    ("cumulative", cumulative),
                    ("date", format_str_datetime(date_us)),
                    ("value", value_to_str(value)),
                    ("metadata", metadata),
                )
            )
            try:
                future = self._submit(self._call, "POST", "metrics/", body=body, headers=_FORM, idempotent=False)
            except (ClosedError, RuntimeError) as exc:  # closed, or closing (the executor refuses)
                gather.failed(index, TransientApiError(f"not sent: {exc}"))
                continue
            gather.sent(future)
            future.add_done_callback(functools.partial(_single_answer, gather, index))

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Release the executor and the connection pool; calling it again is harmless.

        Args:
            timeout: None waits for every pending request, as upstream's context manager
                did. A number waits at most that long; then pending requests are cancelled,
                retry waits end, and requests still waiting for an answer are aborted.
        """
        with self._lock:
            first = not self._closed.is_set()
            pending = list(self._pending)
        if timeout is None:
            self.executor.shutdown(wait=True)
        else:
            self.executor.shutdown(wait=False)
            _, not_done = concurrent.futures.wait(pending, timeout=max(0.0, timeout))
            if not_done:
                self._closed.set()
                for future in not_done:
                    future.cancel()
                self._abort_connections()
        self._closed.set()
        if first and self._own_session:
            self._session.close()

    def _abort_connections(self) -> None:
        """Shut down every live socket, so requests blocked on an answer fail at once."""
        for conn in list(self._connections):  # urllib3 and http.client connections alike
            sock = getattr(conn, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed.is_set()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ApiClient(endpoint={self.endpoint!r}, max_workers={self.max_workers})"


def _single_answer(gather: Gather, index: int, future: Future[requests.Response]) -> None:
    """The answer to one single post of a fan-out, for its :class:`Gather`."""
    try:
        response = future.result()
    except concurrent.futures.CancelledError:
        gather.failed(index, TransientApiError("not sent: the client was closed first"))
    except ApiError as exc:
        gather.failed(index, exc)
    except Exception as exc:
        gather.failed(index, ApiError(f"unexpected error: {exc}"))
    else:
        if response.status_code == 201:
            gather.stored(index)
        else:
            gather.failed(index, _post_error(response))


def _post_error(response: requests.Response, *, transient: bool = False) -> ApiError:
    """The error a POST of metrics answered with other than 2xx means.

    A redirect is a configuration error (the URL leads to a proxy or a login page): the
    metrics are kept (and spooled) while the logger reports it, not refused.
    ``transient``: any 5xx may pass (a batch with an id can be sent again safely).
    """
    status = response.status_code
    if 300 <= status < 400:
        target = response.headers.get("Location", "?")
        return TransientApiError(
            f"configuration error: POST {response.request.url} answered {status} (a redirect to {target}); "
            "check the server URL: metrics are kept until it answers",
            status_code=status,
            method="POST",
            url=str(response.request.url),
        )
    return _status_error(response, transient=transient)


# -- argument handling -----------------------------------------------------------------


def _new_executor(max_workers: int) -> concurrent.futures.ThreadPoolExecutor:
    """The request workers: their threads leave SIGTERM and SIGINT to the main thread."""
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=max_workers, thread_name_prefix="mlbench-api", initializer=block_signals
    )


def _form(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """Form-encode as requests encodes ``data=dict``: ``str()`` of each value, None left out."""
    return urlencode([(k, v if isinstance(v, str) else str(v)) for k, v in pairs if v is not None]).encode()


# What the dashboard does with what upstream sends (PROTOCOL.md), for the warnings.
_BEYOND_SCHEMA: Final = (
    "the embedded server answers 400; the dashboard stores it whole on SQLite, fails (500) on PostgreSQL"
)
_REFUSED: Final = "the dashboard answers 500, the embedded server 400"
_BAD_COUNT: Final = "the dashboard answers 500 or ignores it, the embedded server answers 400"
_RUN_REFUSED: Final = "the dashboard answers 304 'Invalid run name' and creates no run, the embedded server answers 400"


def _sent(check: Callable[[Any], str], value: Any, problems: list[str], consequence: str) -> str:
    """``check(value)``: the text to send; when the check refuses the value, the problem
    (with what the dashboard will do) goes to ``problems`` and ``str(value)`` is sent, as
    upstream sends it."""
    try:
        return check(value)
    except (TypeError, ValueError) as exc:
        problems.append(f"{exc}: {consequence}")
        return str(value)


def _check_run_name(name: Any) -> str:
    if not isinstance(name, str) or len(name) > 100 or not _RUN_NAME_RE.fullmatch(name.lower()):
        raise ValueError(
            f"invalid run name {name!r} (use lowercase letters, digits and '-', starting and ending "
            "with a letter or digit, at most 100 characters)"
        )
    return name


def _cumulative_text(cumulative: Any) -> str:
    """``cumulative`` as the dashboard parses it: ``True`` or ``False``.

    Text is read by the one validator, so ``"False"`` stays false (``bool("False")`` is
    True); anything else becomes ``str(bool(...))``, as upstream sends it.
    """
    return str(check_flag(cumulative) if isinstance(cumulative, str) else bool(cumulative))


def _value_text(value: Any) -> str:
    """The value as upstream sends it (``str()``, NaN and infinities kept), checked."""
    return str(check_value(value_to_str(value)))


def _count_text(what: str) -> Callable[[Any], str]:
    """A check that a query parameter is a non-negative integer, giving its text."""
    return lambda value: str(_non_negative_int(value, what))


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _date_text(date: _dt.datetime | str | int | None) -> str:
    """The date as upstream sends it (``str(datetime)``), checked to be parseable."""
    if date is None:
        return format_str_datetime(_now_us())
    if isinstance(date, _dt.datetime):
        return str(date)
    if isinstance(date, int) and not isinstance(date, bool):
        return format_str_datetime(date)
    if isinstance(date, str):
        parse_date(date)  # raises ValueError with a clear message
        return date
    raise TypeError(f"date must be a datetime, a date string or microseconds, not {type(date).__name__}")


def _since(since: _dt.datetime | str) -> str:
    """``since`` in the one format the dashboard parses: ``%Y-%m-%dT%H:%M:%S.%fZ`` (UTC)."""
    if isinstance(since, _dt.datetime):
        return format_dashboard_date(to_us(since))
    if isinstance(since, str):
        return format_dashboard_date(parse_date(since))
    raise TypeError(f"since must be a datetime or a date string, not {type(since).__name__}")
