"""The HTTP side of :class:`~mlbench_metrics.ApiClient`: one session, retries, errors.

:class:`Transport` owns what every call goes through: the ``requests.Session`` with a
keep-alive pool sized to the workers (its connections tracked, so ``close()`` can abort
them), the lean :class:`~.fast_poster.FastPoster` for batch posts, the retry policy, and
the thread pool that runs calls and hands back Futures. ``requests`` exceptions are
wrapped here and nowhere else (:func:`status_error` and :func:`post_error` say what an
answer means).

Threads: the pool's workers (``mlbench-api_*``), started on demand by
``concurrent.futures`` with SIGTERM and SIGINT blocked, stopped by :meth:`Transport.close`.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Final, Iterable, Mapping, TypeVar
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
import urllib3.connection
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from .._lifecycle import at_fork_in_child
from .._threads import block_signals, signals_blocked
from .._version import __version__
from ..errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeout,
    ClientApiError,
    ClosedError,
    ConfigError,
    TransientApiError,
)
from .answers import is_refusal
from .fast_poster import FastPoster, ack_promptly
from .retry import RETRYABLE_STATUSES, RetryableResponse, RetryPolicy, parse_retry_after
from .timeouts import Timeouts

__all__ = ["FORM", "JSON", "Transport", "endpoint_of", "form", "post_error", "status_error"]

_T = TypeVar("_T")

FORM: Final = {"Content-Type": "application/x-www-form-urlencoded"}
JSON: Final = {"Content-Type": "application/json"}
_BODY_PREVIEW: Final = 2000


def endpoint_of(url: str) -> str:
    """The API root for ``url`` (``host:port[/path]`` as upstream takes it, or an http(s) URL).

    Raises:
        ConfigError: ``url`` names no host, a bad port or another scheme.
    """
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


def form(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """Form-encode as requests encodes ``data=dict``: ``str()`` of each value, None left out."""
    return urlencode([(k, v if isinstance(v, str) else str(v)) for k, v in pairs if v is not None]).encode()


# -- connections we can abort ----------------------------------------------------------


class _Tracked:
    """Mixin for urllib3 connections: remember each live one so ``close()`` can abort it."""

    registry: weakref.WeakSet[Any]

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.registry.add(self)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        """Read the answer, its segments ACKed at once (see :func:`~.fast_poster.ack_promptly`)."""
        sock = getattr(self, "sock", None)
        if sock is not None:
            ack_promptly(sock)
        return super().getresponse(*args, **kwargs)  # type: ignore[misc]


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


def status_error(response: requests.Response, *, transient: bool = False) -> ApiError:
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


def post_error(response: requests.Response) -> ApiError:
    """The error a POST of metrics answered with other than 2xx means.

    Only an MLBench server refusing the records (a 4xx with the API's JSON error object,
    :func:`.answers.is_refusal`) is a :class:`ClientApiError`: they are dropped. Anything
    else keeps them (transient: sent again, spooled): a 5xx (a batch carries its id, and a
    single post answered 5xx was not stored), a redirect (the URL leads to a proxy or a
    login page: a configuration error the logger reports), and a 4xx that is not the API's
    JSON (an HTML 404 of another program at the URL): it says nothing about the records.
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
    error = status_error(response, transient=True)
    if isinstance(error, TransientApiError) or is_refusal(response):
        return error
    return TransientApiError(
        f"{error}: not an answer of the MLBench API; the metrics are kept",
        status_code=error.status_code,
        body=error.body,
        method=error.method,
        url=error.url,
        retry_after=error.retry_after,
    )


# -- the transport ----------------------------------------------------------------------


class Transport:
    """Calls to one API root, with retries, run on a pool of threads.

    Args:
        endpoint: the API root (see :func:`endpoint_of`).
        max_workers: threads that run calls, and the size of the connection pool.
        timeouts: connect and read timeouts for every request.
        retry: the retry policy.
        token: a bearer token for every request, or None.
        session: a ``requests.Session`` to use instead of an own one; then the pool is
            not resized and requests cannot be aborted on ``close()``.
    """

    def __init__(
        self,
        endpoint: str,
        max_workers: int,
        timeouts: Timeouts,
        retry: RetryPolicy,
        token: str | None,
        session: requests.Session | None,
    ) -> None:
        self.endpoint = endpoint
        self.max_workers = max_workers
        self.timeouts = timeouts
        self.retry = retry
        self._token = token
        self._own_session = session is None
        self._closed = threading.Event()
        self._start(session)
        at_fork_in_child(self._after_fork_in_child)

    def _start(self, session: requests.Session | None) -> None:
        # Reentrant: a SIGTERM handler runs in the main thread between any two bytecodes,
        # also while it holds this lock in submit(), and closing submits again.
        self._lock = threading.RLock()
        self._pending: set[Future[Any]] = set()
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.max_workers, thread_name_prefix="mlbench-api", initializer=block_signals
        )
        self._session = session if session is not None else self._new_session()
        self._session.hooks.setdefault("response", []).append(_drop_connection_after_no_content)
        self._fast = self._new_fast_poster()

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
        self._start(None if self._own_session else self._session)

    # -- calls -----------------------------------------------------------------------------

    def submit(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` on the pool.

        Raises:
            ClosedError: the transport is closed.
        """
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
        if self._closed.is_set():
            # close() gave up on the pending calls: one that was still waiting for its
            # turn (a lock, its first attempt) must not start a request nobody aborts.
            raise ApiConnectionError(
                f"{method} {url}: not sent: the client was closed", sent=False, method=method, url=url
            )
        if self._fast is not None and method == "POST" and url.endswith("metrics/batch/") and body is not None:
            response = self._fast.post("metrics/batch/", body, JSON["Content-Type"])
        else:
            response = self._send(method, url, params, body, headers)
        if response.status_code in RETRYABLE_STATUSES:
            error = status_error(response)
            assert isinstance(error, TransientApiError)
            raise RetryableResponse(response, error)
        return response

    def _send(
        self, method: str, url: str, params: Any, body: bytes | None, headers: Mapping[str, str] | None
    ) -> requests.Response:
        try:
            return self._session.request(
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

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        retry: bool = True,
    ) -> requests.Response:
        """One call with retries, in the calling thread; returns the last answer whatever its status.

        Args:
            retry: False makes one attempt whatever the policy says: the caller decides
                when to try again (the dispatcher does, for the batches it delivers).

        Raises:
            ApiError: no answer came (the transport's errors, after retries).
        """
        try:
            if not retry:
                return self._attempt(method, self.endpoint + path, params, body, headers)
            return self.retry.call(
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

    def once(self, method: str, path: str) -> requests.Response:
        """One attempt without a body, no retries, in the calling thread: for a quick
        question whose answer is only useful now (``ApiClient.run_exists``).

        Raises:
            ApiError: no answer came.
        """
        try:
            return self._attempt(method, self.endpoint + path, None, None, None)
        except RetryableResponse as exc:
            return exc.response

    def request(self, method: str, path: str, **kwargs: Any) -> Future[requests.Response]:
        """:meth:`call` on the pool; GET, DELETE and HEAD count as idempotent unless told."""
        idempotent = kwargs.pop("idempotent", method in ("GET", "DELETE", "HEAD"))
        return self.submit(self.call, method, path, idempotent=idempotent, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Release the pool and the connections; calling it again is harmless.

        Args:
            timeout: None waits for every pending call. A number waits at most that long;
                then pending calls are cancelled, retry waits end, and requests still
                waiting for an answer are aborted.
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
