"""The retry policy: what is retried, how long to wait, and a sleep ``close()`` can cut.

A :class:`RetryPolicy` is a frozen value users pass to ``ApiClient(retry=...)``; the
client turns it into a ``tenacity.Retrying`` per call. What is *safe* to retry depends on
the request, not on the policy:

* GET and DELETE, and a POST that carries an idempotency key (the batch endpoint's
  ``batch_id``): connection errors, timeouts, 429, 502, 503, 504;
* any other POST only when the server cannot have acted on it: the connection was
  refused or never opened, or the answer was 429 or 503.

Other 4xx are never retried. No threads are started here.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Final, TypeVar, cast

import requests
import tenacity

from ..errors import ApiError, ConfigError, TransientApiError, TransportError

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "parse_retry_after"]

_R = TypeVar("_R")

RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
"""Answers that say "try again later" on any request that is safe to repeat."""

_NOT_PROCESSED_STATUSES: Final = frozenset({429, 503})
"""Answers after which even a POST without an idempotency key is safe to repeat."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Interrupted(Exception):
    """Raised by the sleep when ``close()`` ended a backoff: no further attempt is made."""


class RetryableResponse(Exception):
    """Raised inside an attempt when the answer's status says "try again".

    Carries the response, so that when the attempts run out the caller still gets it
    (upstream-compatible calls return the last ``requests.Response``, whatever its status).
    """

    def __init__(self, response: requests.Response, error: TransientApiError) -> None:
        super().__init__(error)
        self.response = response
        self.error = error


def is_safe_to_retry(exc: BaseException, *, idempotent: bool) -> bool:
    """Whether ``exc`` (raised by one attempt) may be answered by another attempt."""
    if isinstance(exc, RetryableResponse):
        status = exc.response.status_code
        return status in RETRYABLE_STATUSES if idempotent else status in _NOT_PROCESSED_STATUSES
    if isinstance(exc, TransportError):
        return idempotent or not exc.sent
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long a failed call is tried again.

    Example::

        ApiClient(url="127.0.0.1:8080", retry=RetryPolicy(max_attempts=8, max_delay=60))
        ApiClient(url="127.0.0.1:8080", retry=RetryPolicy.none())    # fail fast

    Args:
        max_attempts: attempts in all, the first included (>= 1).
        max_delay: seconds from the first attempt after which no new attempt starts.
        backoff_base: the first wait in seconds; each further wait doubles it.
        backoff_max: the longest single wait in seconds.
        jitter: each wait is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``.
        honor_retry_after: wait what the server's ``Retry-After`` says (capped by
            ``retry_after_max`` and by what is left of ``max_delay``).
        retry_after_max: the longest wait a ``Retry-After`` can impose.
        sleep: how to wait; None waits on the client's close event, so ``close()`` ends
            a backoff at once. Tests pass ``sleep=delays.append`` to record the schedule.
    """

    max_attempts: int = 5
    max_delay: float = 30.0
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    jitter: float = 0.2
    honor_retry_after: bool = True
    retry_after_max: float = 60.0
    sleep: Callable[[float], Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("max_delay", "backoff_base", "backoff_max", "retry_after_max"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"jitter must be between 0 and 1, got {self.jitter}")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based), before jitter."""
        return float(min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1))))

    def retrying(self, *, idempotent: bool, stop_event: threading.Event) -> tenacity.Retrying:
        """A ``tenacity.Retrying`` for one call under this policy.

        Args:
            idempotent: whether the request is safe to repeat after any transient failure.
            stop_event: set by ``close()``; stops retrying and cuts the current wait short.
        """
        policy = self

        def wait(state: tenacity.RetryCallState) -> float:
            delay = policy.backoff(state.attempt_number)
            if policy.jitter:
                delay *= random.uniform(1 - policy.jitter, 1 + policy.jitter)
            exc = state.outcome.exception() if state.outcome is not None else None
            error = exc.error if isinstance(exc, RetryableResponse) else exc
            if policy.honor_retry_after and isinstance(error, ApiError) and error.retry_after is not None:
                delay = min(error.retry_after, policy.retry_after_max)
            elapsed = state.seconds_since_start or 0.0
            return max(0.0, min(delay, policy.max_delay - elapsed))

        def stop(state: tenacity.RetryCallState) -> bool:
            if stop_event.is_set() or state.attempt_number >= policy.max_attempts:
                return True
            return (state.seconds_since_start or 0.0) >= policy.max_delay

        base_sleep = cast(Callable[[float], None], policy.sleep if policy.sleep is not None else stop_event.wait)

        def sleep(seconds: float) -> None:
            # tenacity attempts again right after the sleep, without asking ``stop``:
            # a wait ended by close() must end the call instead.
            base_sleep(seconds)
            if stop_event.is_set():
                raise _Interrupted

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: is_safe_to_retry(e, idempotent=idempotent)),
            wait=wait,
            stop=stop,
            sleep=sleep,
            reraise=True,
        )

    def call(self, fn: Callable[..., _R], *args: Any, idempotent: bool, stop_event: threading.Event) -> _R:
        """Call ``fn(*args)`` under this policy; the last failure is raised as it was.

        Args:
            fn: one attempt; raises to fail it.
            idempotent: whether the call is safe to repeat after any transient failure.
            stop_event: set by ``close()``: no new attempt starts after it is set.
        """
        last: list[BaseException] = []

        def attempt() -> _R:
            try:
                return fn(*args)
            except BaseException as exc:
                last[:] = [exc]
                raise

        try:
            result: _R = self.retrying(idempotent=idempotent, stop_event=stop_event)(attempt)
        except _Interrupted:
            raise last[0] from None
        return result
