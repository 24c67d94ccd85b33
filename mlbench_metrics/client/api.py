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
  only where a retry is safe (see ``retry.py``);
* :meth:`ApiClient.post_metrics`, many metrics in one call: the embedded server's batch
  endpoint when there is one, else single posts in parallel over the pool;
* clear errors (``errors.py``) instead of asserts; ``close()`` that ends within its
  timeout even while a server hangs.

The pieces: ``transport.Transport`` (the session, retries, the pool of worker threads,
errors at the one boundary), ``posting.MetricsPoster`` (batches: the batch endpoint or
single posts) and ``dropin`` (each argument as upstream sends it, and the warnings).
This module is the public face: the upstream methods and the extensions.

Threads: the transport's worker threads (``mlbench-api_*``), started on demand and
stopped by :meth:`ApiClient.close`.
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import requests

from ..env import ENV_TOKEN, ENV_URL, env_str
from ..errors import ApiError, ConfigError
from ..records import Metric, MetricBatch, as_batch, batch_problem, check_name, metadata_to_str
from .answers import run_found
from .dropin import (
    BAD_COUNT,
    BEYOND_SCHEMA,
    REFUSED,
    count_text,
    cumulative_text,
    date_text,
    now_us,
    refuse_or_warn,
    sent,
    since_text,
    value_text,
)
from .extensions import ExtensionCalls
from .images import MLBENCH_BACKENDS, MLBENCH_IMAGES
from .posting import MetricsPoster, ServerInfo
from .result import BatchFuture, BatchResult
from .retry import RetryPolicy
from .run_spec import RunSpec
from .timeouts import TimeoutLike, Timeouts
from .transport import FORM, Transport, endpoint_of, form

__all__ = ["MLBENCH_BACKENDS", "MLBENCH_IMAGES", "ApiClient", "BatchResult"]


class ApiClient(ExtensionCalls):
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
        self.endpoint = endpoint_of(url)
        self._transport = Transport(
            self.endpoint,
            max_workers,
            Timeouts.of(timeout),
            retry or RetryPolicy(),
            token if token is not None else env_str(ENV_TOKEN),
            session,
        )
        self._info = ServerInfo(self._transport)
        self._poster = MetricsPoster(self._transport, self._info)

    @property
    def timeouts(self) -> Timeouts:
        """Connect and read timeouts of every request."""
        return self._transport.timeouts

    @property
    def retry_policy(self) -> RetryPolicy:
        """How calls are retried; assign another :class:`RetryPolicy` to change it."""
        return self._transport.retry

    @retry_policy.setter
    def retry_policy(self, policy: RetryPolicy) -> None:
        if not isinstance(policy, RetryPolicy):
            raise ConfigError(f"retry_policy must be a RetryPolicy, got {type(policy).__name__}")
        self._transport.retry = policy

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The pool that runs requests (upstream's attribute of the same name)."""
        return self._transport.executor

    def _request(self, method: str, path: str, **kwargs: Any) -> Future[requests.Response]:
        return self._transport.request(method, path, **kwargs)

    def _refuse_or_warn(self, what: str, problems: list[str], *, depth: int = 1) -> None:
        refuse_or_warn(self.strict, what, problems, depth=depth + 1)

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
            params["since"] = sent(since_text, since, problems, REFUSED)
        if format is not None:
            params["format"] = format
        if summarize is not None:
            params["summarize"] = sent(count_text("summarize"), summarize, problems, BAD_COUNT)
        if metric_filter is not None:
            params["metric_filter"] = str(metric_filter)
        if last_n is not None:
            params["last_n"] = sent(count_text("last_n"), last_n, problems, BAD_COUNT)
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
        name_text = sent(check_name, name, problems, BEYOND_SCHEMA if name else REFUSED)
        body = form(
            (
                ("run_id", run_id),
                ("name", None if name is None else name_text),  # None is left out, as upstream's requests does
                ("cumulative", sent(cumulative_text, cumulative, problems, REFUSED)),
                ("date", sent(date_text, date, problems, REFUSED)),
                ("value", sent(value_text, value, problems, BEYOND_SCHEMA)),
                ("metadata", metadata_to_str(metadata)),
            )
        )
        self._refuse_or_warn("post_metric", problems)
        return self._request("POST", "metrics/", body=body, headers=FORM)

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

    def run_exists(self, run_id: int, timeout: float = 2.0) -> bool | None:
        """Whether run ``run_id`` exists on the server, asked once (no retries).

        Returns:
            True or False as the server answers (:func:`.answers.run_found`: the run's
            JSON, or a 404 in the API's JSON); None when no clear answer came within
            ``timeout`` seconds (the server is down, slow, or answered otherwise).
        """
        try:
            future = self._transport.submit(self._transport.once, "GET", f"runs/{quote(str(run_id), safe='')}/")
            response = future.result(timeout)
        except (ApiError, concurrent.futures.TimeoutError):
            return None
        return run_found(response, run_id, self._info.odd)

    def create_run(
        self,
        name: str,
        num_workers: int,
        num_cpus: float = RunSpec.num_cpus,
        max_bandwidth: int = RunSpec.max_bandwidth,
        image: str | None = None,
        backend: str | None = None,
        custom_image_name: str | None = None,
        custom_image_command: str | None = None,
        custom_backend: str | None = None,
        run_all_nodes: bool = False,
        gpu_enabled: bool = False,
        light_target: bool = False,
    ) -> Future[requests.Response]:
        """Create a new benchmark run (upstream's signature; the fields are :class:`RunSpec`'s).

        Returns:
            A Future of the ``requests.Response`` (201 with the run).

        Raises:
            ValueError: see :meth:`create_run_from`.
        """
        spec = RunSpec(
            name,
            num_workers,
            num_cpus,
            max_bandwidth,
            image,
            backend,
            custom_image_name,
            custom_image_command,
            custom_backend,
            run_all_nodes,
            gpu_enabled,
            light_target,
        )
        return self._create_run(spec)

    def create_run_from(self, spec: RunSpec) -> Future[requests.Response]:
        """Create the run ``spec`` describes.

        Returns:
            A Future of the ``requests.Response`` (201 with the run).

        Raises:
            ValueError: the image is not one of :data:`MLBENCH_IMAGES` (and no custom
                image is given), or both ``backend`` and ``custom_backend`` are given, as
                upstream refuses them; with ``strict=True`` also a name or backend the
                dashboard refuses. Otherwise such a run is sent as upstream sends it (a
                backend it does not know is left out), with a :class:`DashboardWarning`.
        """
        return self._create_run(spec)

    def _create_run(self, spec: RunSpec) -> Future[requests.Response]:
        problems: list[str] = []
        data = spec.form(problems)
        self._refuse_or_warn("create_run", problems, depth=2)  # the caller called a public method
        return self._request("POST", "runs/", body=form(data.items()), headers=FORM)

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

    @property
    def batch_supported(self) -> bool | None:
        """Whether the server has the batch endpoint: None until the first ``post_metrics``."""
        return self._poster.batch_supported

    def post_metrics(
        self,
        run_id: int,
        metrics: MetricBatch | Sequence[Metric | Mapping[str, Any]],
        *,
        batch_id: str | None = None,
        writer: Mapping[str, Any] | None = None,
        retry: bool = True,
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
            writer: ``{"id", "rank"}`` of the logger sending, which the embedded server's
                ``writers`` extension takes as a sign of life (not sent to other servers).
            retry: False makes one attempt per request, whatever the retry policy says:
                the caller decides when to send again what failed (a logger's
                dispatcher does, honouring ``Retry-After``; see :func:`deliver_to
                <mlbench_metrics.delivery.deliver_to>`).

        Returns:
            A Future of the :class:`BatchResult`; failures are in the result, not raised.

        Raises:
            TypeError, ValueError: a metric is malformed (nothing is sent).
            ClosedError: the client is closed.
        """
        batch = as_batch(metrics, now_us())
        problem = batch_problem(batch)
        if problem is not None:
            raise ValueError(problem)
        return self._poster.post(run_id, batch, batch_id, writer, retry)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Release the executor and the connection pool; calling it again is harmless.

        Args:
            timeout: None waits for every pending request, as upstream's context manager
                did. A number waits at most that long; then pending requests are cancelled,
                retry waits end, and requests still waiting for an answer are aborted.
        """
        self._transport.close(timeout)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._transport.closed

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ApiClient(endpoint={self.endpoint!r}, max_workers={self.max_workers})"
