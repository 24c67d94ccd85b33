"""The exceptions mlbench-metrics raises.

Every error the library raises derives from :class:`MetricsError`, so one ``except``
catches them all; errors that are also a kind of builtin error subclass that builtin,
so code that catches ``ValueError`` or ``RuntimeError`` keeps working::

    MetricsError
    ├── ConfigError (ValueError)          a bad argument or setting
    ├── ClosedError (RuntimeError)        a logger or client used after close()
    ├── TimerError (RuntimeError)         a timer stopped twice, or started twice
    ├── DiscoveryError (ValueError)       the dashboard cannot be found in Kubernetes
    ├── SpoolError (OSError)              the on-disk spool cannot be read or written
    └── ApiError                          a call to the dashboard failed
        ├── TransientApiError             safe to retry: 429, 502, 503, 504
        │   └── TransportError            no usable answer at all
        │       ├── ApiConnectionError (requests.ConnectionError)
        │       └── ApiTimeout (requests.Timeout)
        └── ClientApiError               refused for good: a 4xx other than 429,
                                          or a 5xx the server keeps answering

One warning: :class:`DashboardWarning` (a ``UserWarning``), when ``ApiClient`` sends
what ``mlbench_core.api.ApiClient`` would send although the dashboard will refuse it or
store it differently (``ApiClient(strict=True)`` raises ``ValueError`` instead).

``requests`` exceptions are wrapped once, in ``client/transport.py``; the two transport errors also
subclass their ``requests`` counterparts so code written for the upstream client,
which catches ``requests.exceptions.ConnectionError``, still catches them.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Iterator
from urllib.parse import urlsplit

import requests

__all__ = [
    "ApiConnectionError",
    "ApiError",
    "ApiTimeout",
    "ClientApiError",
    "ClosedError",
    "ConfigError",
    "DashboardWarning",
    "DiscoveryError",
    "MetricsError",
    "SpoolError",
    "TimerError",
    "TransientApiError",
    "TransportError",
    "describe_transport_error",
]


class MetricsError(Exception):
    """The root of every error mlbench-metrics raises."""


class ConfigError(MetricsError, ValueError):
    """A bad argument, setting or environment value."""


class ClosedError(MetricsError, RuntimeError):
    """A logger or client was used after ``close()``."""


class TimerError(MetricsError, RuntimeError):
    """A :class:`~mlbench_metrics.Timer` was misused (stopped when not running, ...)."""


class DiscoveryError(MetricsError, ValueError):
    """The dashboard's endpoint could not be found through Kubernetes."""


class SpoolError(MetricsError, OSError):
    """The on-disk spool could not be read or written."""


class DashboardWarning(UserWarning):
    """Sent as the upstream client would send it, but the dashboard will refuse it or alter it.

    Silence it with ``warnings.simplefilter("ignore", DashboardWarning)``, or make such
    calls raise with ``ApiClient(strict=True)``.
    """


class ApiError(MetricsError):
    """A call to the dashboard failed.

    Attributes:
        status_code: the HTTP status, or None when no answer arrived.
        body: the answer's text (at most 2,000 characters), or "".
        method: the HTTP method of the call.
        url: the URL of the call.
        retry_after: seconds the server asked us to wait, when it said so.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str = "",
        method: str = "",
        url: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body[:2000]
        self.method = method
        self.url = url
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """True when trying again later may succeed."""
        return isinstance(self, TransientApiError)


class TransientApiError(ApiError):
    """A failure that may pass: the server was busy, overloaded or unreachable."""


class ClientApiError(ApiError):
    """The server refused the call for good; sending it again will not help."""


class TransportError(TransientApiError):
    """No usable HTTP answer: the connection failed, broke or timed out.

    Attributes:
        sent: False when the request certainly never reached the server (the
            connection was refused), so even a POST is safe to send again.
    """

    def __init__(self, message: str, *, sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.sent = sent


class ApiConnectionError(TransportError, requests.exceptions.ConnectionError):
    """The connection to the dashboard could not be made or broke."""


class ApiTimeout(TransportError, requests.exceptions.Timeout):
    """The dashboard did not answer in time."""


# -- one line for "no answer" ------------------------------------------------------------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (causes, contexts, ``reason``s and arguments)."""
    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        for sub in (getattr(e, "reason", None), e.__cause__, e.__context__, *getattr(e, "args", ())):
            if isinstance(sub, BaseException):
                stack.append(sub)


def _why(exc: BaseException) -> str:
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, ConnectionResetError):
            return "the connection was reset"
        if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to the host"
    return "no answer in time" if isinstance(exc, ApiTimeout) else "the connection failed"


def describe_transport_error(exc: TransportError) -> str:
    """ "nothing answers at 127.0.0.1:8080 (connection refused)" rather than urllib3's pool message."""
    try:
        parts = urlsplit(exc.url)
        where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    except ValueError:
        where = exc.url
    why = _why(exc)
    if why == "no answer in time" and exc.sent:
        return f"the server at {where} did not answer in time"
    hint = "; is `mlbench-metrics serve` running there?" if why == "connection refused" else ""
    return f"nothing answers at {where} ({why}){hint}"
