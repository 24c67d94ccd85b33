"""Whether an answer comes from an MLBench server, and what a failed post of metrics means.

An MLBench server (the dashboard, the embedded server) answers its API in JSON: an object
for a run, and an object for an error (``{"message": ...}``, the embedded server's
``{"error": "run_not_found", ...}``, Django REST framework's ``{"field": [...]}``). Only
such a 4xx is a refusal of the records sent (:func:`is_refusal`). Anything else at the
URL (a 501 from ``python -m http.server``, a directory listing, a 404 HTML page of some
other program, a proxy's error page) says nothing about the records: they are kept, sent
again later and spooled as in any outage, and :class:`OddServerNotice` says once that the
server does not look like an MLBench server, with what it answered.

No threads; the notice may be called from any client thread.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final

import requests

from .retry import RETRYABLE_STATUSES

__all__ = ["OddServerNotice", "api_object", "describe", "is_refusal", "looks_odd", "run_found"]

_log = logging.getLogger("mlbench_metrics")

_OUTAGE: Final = RETRYABLE_STATUSES | {500}
"""Statuses any server (or its proxy) answers in an outage, whatever its body."""


def api_object(response: requests.Response) -> dict[str, Any] | None:
    """The answer's body as a JSON object, or None when it is not one (HTML, text, a list)."""
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def is_refusal(response: requests.Response) -> bool:
    """Whether the answer is an MLBench server refusing what was sent: a 4xx (not 429,
    "too many requests") whose body is the API's JSON error object."""
    status = response.status_code
    return 400 <= status < 500 and status not in RETRYABLE_STATUSES and api_object(response) is not None


def looks_odd(response: requests.Response) -> bool:
    """Whether the answer is one no MLBench server gives to its API: not 2xx/3xx, not
    an outage status, and not a JSON object (or a 501, "not implemented")."""
    status = response.status_code
    if status < 400 or status in _OUTAGE:
        return False
    return status == 501 or api_object(response) is None


def describe(response: requests.Response) -> str:
    """The answer in a few words: status, reason, content type and the start of its body."""
    kind = response.headers.get("Content-Type", "no content type").split(";")[0].strip()
    start = " ".join(response.text[:80].split())
    return f"{response.status_code} {response.reason} ({kind}: {start!r})"


def run_found(response: requests.Response, run_id: int, notice: OddServerNotice) -> bool | None:
    """What an answer to ``GET runs/<run_id>/`` says: True for the run (a JSON object with
    its id), False for a 404 in the API's JSON, None for anything else (cannot tell). A 200
    or 404 that is not the API's JSON (a directory listing, an HTML page) is said once by
    ``notice``: the server at the URL does not look like an MLBench server."""
    answer = api_object(response)
    status = response.status_code
    if status == 200 and answer is not None and str(answer.get("id")) == str(run_id):
        return True
    if status == 404 and answer is not None:
        return False
    if status in (200, 404) or looks_odd(response):
        notice.say(response, f"cannot tell whether run {run_id} exists; metrics are kept until it answers")
    return None


class OddServerNotice:
    """Says once, as a warning, that the server at ``endpoint`` does not look like an
    MLBench server, and what it answered.

    Args:
        endpoint: the client's API root.
    """

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._said = False

    def say(self, response: requests.Response, consequence: str) -> None:
        """Warn (the first time only) with what ``response`` was and ``consequence``."""
        with self._lock:
            if self._said:
                return
            self._said = True
        request = response.request
        _log.warning(
            "mlbench-metrics: the server at %s does not look like an MLBench server: %s %s answered %s; "
            "check the URL (%s)",
            self._endpoint.removesuffix("/api/"),
            request.method,
            request.url,
            describe(response),
            consequence,
        )
