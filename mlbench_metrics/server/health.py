"""Probes and database failures as answers: ``/healthz``, ``/readyz``, and the store's errors.

* ``GET /healthz``: the process answers (liveness: a failing database is no reason to
  restart it); ``GET /readyz``: the database answers too (readiness: 503 while it does not,
  so a load balancer sends requests elsewhere). Both are answered before the access checks:
  probes (Kubernetes') send no token and address the pod by its IP, and the answers say
  nothing but "up", "ready" or "not ready": why the database fails (its URL, user, host,
  the driver's words) goes to the server's log, not to whoever asks without a token.
* :class:`FailureAnswers` turns the store's errors (:mod:`.database`) into answers: a 503
  with ``Retry-After`` when the database cannot answer now (clients retry, then spool:
  nothing is lost), logged once a minute per kind (a full disk fails every write, and each
  used to log a line); a 400 for a value the database cannot hold; a 500 otherwise.

No threads are started here.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Final, Protocol

from ._http import Request, Response
from .database import StoreError, StoreUnavailable, ValueRefused
from .parsing import error_response, json_response

__all__ = ["PROBE_PATHS", "FailureAnswers", "Pingable", "probe_answer"]

PROBE_PATHS: Final = ("/healthz", "/readyz")
"""The probes' paths (the Kubernetes manifests name them)."""

_log = logging.getLogger("mlbench_metrics.server")
_WARN_EVERY: Final = 60.0  # seconds between two log lines about one kind of database failure


class Pingable(Protocol):
    """What readiness asks: a store whose database can be pinged."""

    def ping(self) -> None:
        """Raise :class:`~.database.StoreUnavailable` unless the database answers now."""


def probe_answer(request: Request, store: Pingable, kind: str, failures: FailureAnswers) -> Response | None:
    """The answer to a probe, or None when ``request`` is not one; a failing database is
    logged through ``failures`` and answered 503 without its details (see the module)."""
    if request.path not in PROBE_PATHS or request.method not in ("GET", "HEAD"):
        return None
    if request.path == "/healthz":
        return json_response(200, {"status": "ok"})
    try:
        store.ping()
    except StoreError as exc:
        told = failures.answer(exc)  # logged (once a minute per kind); its words stay there
        retry = [(k, v) for k, v in told.headers if k == "Retry-After"] or [("Retry-After", "1")]
        return error_response(503, "not ready: the database does not answer (the server's log says why)", headers=retry)
    return json_response(200, {"status": "ready", "database": kind})


class FailureAnswers:
    """The answers to the store's errors (see the module); one per app, thread-safe enough
    (a lost update of when a kind was last logged costs one extra log line)."""

    def __init__(self) -> None:
        self._warned: dict[str, float] = {}  # kind of database failure -> when last logged

    def answer(self, exc: StoreError) -> Response:
        """The answer to ``exc``."""
        if isinstance(exc, ValueRefused):
            return error_response(400, str(exc))
        if not isinstance(exc, StoreUnavailable):
            _log.error("%s", exc)
            return error_response(500, "the database failed; the server's log says how")
        message = str(exc)
        now = time.monotonic()
        kind = message.split(" (", 1)[0]
        if now - self._warned.get(kind, -math.inf) >= _WARN_EVERY:
            self._warned[kind] = now
            _log.warning("%s (answering 503; said again at most once a minute)", message)
        return error_response(503, message, headers=[("Retry-After", str(exc.retry_after))])
