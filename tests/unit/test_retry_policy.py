"""The retry policy on its own: schedule, bounds, what is safe to retry."""

from __future__ import annotations

import email.utils
import threading

import pytest
import requests

from mlbench_metrics import ConfigError, RetryPolicy
from mlbench_metrics.client.retry import RetryableResponse, is_safe_to_retry, parse_retry_after
from mlbench_metrics.errors import ApiConnectionError, ApiTimeout, TransientApiError


def _response(status: int) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    return r


def test_backoff_doubles_up_to_the_cap() -> None:
    p = RetryPolicy(backoff_base=0.5, backoff_max=3)
    assert [p.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_schedule_with_jitter_stays_in_bounds() -> None:
    delays: list[float] = []
    p = RetryPolicy(max_attempts=4, backoff_base=1, backoff_max=10, jitter=0.2, sleep=delays.append)
    attempts = []

    def flaky() -> None:
        attempts.append(1)
        raise ApiTimeout("slow", sent=True)

    with pytest.raises(ApiTimeout):
        p.call(flaky, idempotent=True, stop_event=threading.Event())
    assert len(attempts) == 4
    for wait, base in zip(delays, [1, 2, 4]):
        assert 0.8 * base <= wait <= 1.2 * base


def test_call_returns_the_first_success() -> None:
    outcomes = iter([ApiConnectionError("refused", sent=False), "ok"])

    def attempt() -> str:
        value = next(outcomes)
        if isinstance(value, Exception):
            raise value
        return value

    assert RetryPolicy(sleep=lambda s: None).call(attempt, idempotent=False, stop_event=threading.Event()) == "ok"


def test_a_set_stop_event_ends_retrying_after_the_wait() -> None:
    stop = threading.Event()
    attempts: list[int] = []

    def attempt() -> None:
        attempts.append(1)
        stop.set()  # close() happens while this attempt fails
        raise ApiTimeout("slow")

    with pytest.raises(ApiTimeout):
        RetryPolicy(max_attempts=10).call(attempt, idempotent=True, stop_event=stop)
    assert attempts == [1]


def test_what_is_safe_to_retry() -> None:
    for status in (429, 502, 503, 504):
        exc = RetryableResponse(_response(status), TransientApiError("x"))
        assert is_safe_to_retry(exc, idempotent=True)
        assert is_safe_to_retry(exc, idempotent=False) is (status in (429, 503))
    assert is_safe_to_retry(ApiConnectionError("refused", sent=False), idempotent=False)
    assert not is_safe_to_retry(ApiConnectionError("reset", sent=True), idempotent=False)
    assert is_safe_to_retry(ApiConnectionError("reset", sent=True), idempotent=True)
    assert not is_safe_to_retry(ValueError("bug"), idempotent=True)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    when = email.utils.formatdate(1_000_060, usegmt=True)
    assert parse_retry_after(when, now=1_000_000) == 60.0
    assert parse_retry_after(email.utils.formatdate(999_000, usegmt=True), now=1_000_000) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_attempts": 0}, {"max_delay": -1}, {"backoff_base": -0.1}, {"jitter": 1.5}, {"retry_after_max": -2}],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_none_never_retries() -> None:
    assert RetryPolicy.none().max_attempts == 1
