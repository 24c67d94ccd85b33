"""Retries against local servers that misbehave on purpose; waits are injected, never slept."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable

import pytest
import requests

from fakes import CLOSE, HANG, RESET, ScriptedServer, Seen, http_response
from mlbench_metrics import ApiClient, RetryPolicy
from mlbench_metrics.errors import ApiConnectionError, ApiTimeout, MetricsError, TransientApiError
from mlbench_metrics.records import Metric

OK_RUNS = http_response(200, "[]")
CREATED = http_response(201, json.dumps({"name": "x", "value": "1"}))


def scripted(*answers: object, then: bytes = OK_RUNS) -> Callable[[Seen, int], object]:
    """Answer the first requests with ``answers``, every later one with ``then``."""

    def script(seen: Seen, index: int) -> object:
        return answers[index] if index < len(answers) else then

    return script


def policy(delays: list[float], **kw: float) -> RetryPolicy:
    return RetryPolicy(sleep=delays.append, jitter=0, **kw)  # type: ignore[arg-type]


def test_503_with_retry_after_seconds_is_honoured() -> None:
    delays: list[float] = []
    with ScriptedServer(scripted(http_response(503, "{}", {"Retry-After": "2"}), then=CREATED)) as fake:
        with ApiClient(url=fake.address, retry=policy(delays)) as c:
            r = c.post_metric(1, "loss", 0.5).result()
    assert r.status_code == 201
    assert len(fake.requests) == 2
    assert delays == [2.0]


def test_retry_after_as_an_http_date() -> None:
    delays: list[float] = []
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    with ScriptedServer(scripted(http_response(429, "{}", {"Retry-After": when}))) as fake:
        with ApiClient(url=fake.address, retry=policy(delays)) as c:
            assert c.get_runs().result().status_code == 200
    assert len(delays) == 1 and 25 <= delays[0] <= 30


def test_retry_after_is_capped() -> None:
    delays: list[float] = []
    with ScriptedServer(scripted(http_response(503, "{}", {"Retry-After": "3600"}))) as fake:
        with ApiClient(url=fake.address, retry=policy(delays, retry_after_max=7, max_delay=100)) as c:
            c.get_runs().result()
    assert delays == [7.0]


def test_get_retries_429_502_503_504_with_exponential_backoff() -> None:
    delays: list[float] = []
    answers = [http_response(s, "{}") for s in (429, 502, 503, 504)]
    with ScriptedServer(scripted(*answers)) as fake:
        with ApiClient(url=fake.address, retry=policy(delays, max_attempts=5, backoff_base=0.5, backoff_max=3)) as c:
            assert c.get_runs().result().status_code == 200
    assert len(fake.requests) == 5
    assert delays == [0.5, 1.0, 2.0, 3.0]


def test_attempts_are_bounded_and_the_last_answer_is_returned() -> None:
    delays: list[float] = []
    with ScriptedServer(scripted(then=http_response(503, "{}"))) as fake:
        with ApiClient(url=fake.address, retry=policy(delays, max_attempts=3)) as c:
            r = c.get_runs().result()
    assert r.status_code == 503  # upstream-compatible: the Response, whatever its status
    assert len(fake.requests) == 3
    assert len(delays) == 2


def test_total_time_is_bounded() -> None:
    delays: list[float] = []
    with ScriptedServer(scripted(then=http_response(503, "{}", {"Retry-After": "5"}))) as fake:
        with ApiClient(url=fake.address, retry=policy(delays, max_attempts=50, max_delay=12)) as c:
            c.get_runs().result()
    # Waits are clipped to what is left of max_delay; the injected sleep does not advance
    # the clock, so the attempt bound is what ends this run.
    assert all(d <= 12 for d in delays)
    assert len(fake.requests) == 50


def test_post_is_not_retried_where_the_server_may_have_acted() -> None:
    for status in (500, 502, 504):
        delays: list[float] = []
        with ScriptedServer(scripted(then=http_response(status, "{}"))) as fake:
            with ApiClient(url=fake.address, retry=policy(delays)) as c:
                assert c.post_metric(1, "x", 1).result().status_code == status
        assert len(fake.requests) == 1, status
        assert delays == []


def test_other_4xx_are_never_retried() -> None:
    for status in (400, 401, 404, 405, 413):
        with ScriptedServer(scripted(then=http_response(status, "{}"))) as fake:
            with ApiClient(url=fake.address, retry=policy([])) as c:
                assert c.get_runs().result().status_code == status
                assert c.post_metric(1, "x", 1).result().status_code == status
        assert len(fake.requests) == 2


def test_reset_connection_retries_a_get_but_not_a_post() -> None:
    delays: list[float] = []
    with ScriptedServer(scripted(RESET)) as fake, ApiClient(url=fake.address, retry=policy(delays)) as c:
        assert c.get_runs().result().status_code == 200
    assert len(fake.requests) == 2 and len(delays) == 1

    with ScriptedServer(scripted(RESET, then=CREATED)) as fake, ApiClient(url=fake.address, retry=policy([])) as c:
        with pytest.raises(ApiConnectionError) as info:
            c.post_metric(1, "x", 1).result()
    assert len(fake.requests) == 1
    assert info.value.sent is True
    assert isinstance(info.value, requests.exceptions.ConnectionError)  # upstream code still catches it
    assert isinstance(info.value, TransientApiError)


def test_closed_connection_without_answer() -> None:
    with ScriptedServer(scripted(CLOSE, CLOSE)) as fake, ApiClient(url=fake.address, retry=policy([])) as c:
        assert c.get_runs().result().status_code == 200
    assert len(fake.requests) == 3


def test_refused_connection_is_retried_even_for_a_post() -> None:
    delays: list[float] = []
    with ScriptedServer(scripted()) as fake:
        address = fake.address
    # The server is gone: the port refuses connections, so the POST was never sent.
    with ApiClient(url=address, retry=policy(delays, max_attempts=4)) as c:
        with pytest.raises(ApiConnectionError) as info:
            c.post_metric(1, "x", 1).result()
    assert info.value.sent is False
    assert len(delays) == 3


def test_answer_slower_than_the_read_timeout() -> None:
    delays: list[float] = []
    with ScriptedServer(scripted(then=HANG)) as fake:
        with ApiClient(url=fake.address, timeout=(5, 0.2), retry=policy(delays, max_attempts=3)) as c:
            with pytest.raises(ApiTimeout):
                c.get_runs().result()
            assert len(fake.requests) == 3 and len(delays) == 2
            with pytest.raises(ApiTimeout) as info:
                c.post_metric(1, "x", 1).result()
    assert len(fake.requests) == 4  # the POST was sent once: it may have been processed
    assert isinstance(info.value, requests.exceptions.Timeout)


def test_a_204_with_a_body_does_not_poison_the_next_request() -> None:
    # The dashboard writes a JSON body after a 204; on a reused connection those bytes
    # would be read as the start of the next answer.
    deleted = (
        http_response(204, headers={"Content-Type": "application/json"})
        + b'{"status": "Deleted", "message": "The run was deleted"}'
    )
    with ScriptedServer(scripted(deleted)) as fake:
        with ApiClient(url=fake.address, max_workers=1, retry=RetryPolicy.none()) as c:
            assert c.delete_run(3).result().status_code == 204
            assert c.get_runs().result().json() == []
            assert c.get_runs().result().json() == []
    assert [r.connection for r in fake.requests] == [1, 2, 2]


def test_close_cuts_a_backoff_short() -> None:
    with ScriptedServer(scripted(then=http_response(503, "{}"))) as fake:
        c = ApiClient(url=fake.address, retry=RetryPolicy(backoff_base=60, backoff_max=60, max_delay=600))
        future = c.get_runs()
        assert fake.wait_for_requests(1)
        started = time.monotonic()
        c.close(timeout=0.2)
        assert future.result(timeout=10).status_code == 503
        assert time.monotonic() - started < 5


def test_close_aborts_a_request_the_server_never_answers() -> None:
    with ScriptedServer(scripted(then=HANG)) as fake:
        c = ApiClient(url=fake.address, timeout=(5, 300))
        future = c.post_metric(1, "x", 1)
        assert fake.wait_for_requests(1)
        started = time.monotonic()
        c.close(timeout=0.3)
        with pytest.raises(MetricsError):
            future.result(timeout=10)
        assert time.monotonic() - started < 3


def test_after_close_aborted_a_call_no_worker_starts_another_request() -> None:
    # Two batches at once against a server that never answers: the first asks the root
    # what the server is; the second waits for that answer. close() aborts the first;
    # the second must not then send its own question and wait for it (the process
    # would wait for that worker at exit, up to the read timeout).
    with ScriptedServer(scripted(then=HANG)) as fake:
        c = ApiClient(url=fake.address, timeout=(5, 300))
        futures = [c.post_metrics(1, [Metric("x", i)]) for i in range(2)]
        assert fake.wait_for_requests(1)
        started = time.monotonic()
        c.close(timeout=0.3)
        for future in futures:
            assert not future.result(timeout=10).ok
        assert time.monotonic() - started < 10
        assert len(fake.requests) == 1


def test_post_metrics_with_a_batch_id_retries_like_a_get() -> None:
    info = http_response(200, json.dumps({"server": {"name": "mlbench-metrics", "batch": {"max_metrics": 100000}}}))
    stored = http_response(201, json.dumps({"stored": 1, "duplicate": False}))
    delays: list[float] = []
    with ScriptedServer(scripted(info, http_response(502, "{}"), RESET, then=stored)) as fake:
        with ApiClient(url=fake.address, retry=policy(delays)) as c:
            result = c.post_metrics(1, [Metric("x", 1)], batch_id="b-1").result()
    assert result.ok and result.stored == 1
    posts = [r for r in fake.requests if r.method == "POST"]
    assert len(posts) == 3
    assert {json.loads(p.body)["batch_id"] for p in posts} == {"b-1"}


def test_post_metrics_without_retry_makes_one_attempt_and_passes_on_retry_after() -> None:
    # The dispatcher's way to deliver: it decides when to send again, not the client.
    info = http_response(200, json.dumps({"server": {"name": "mlbench-metrics", "batch": {"max_metrics": 100000}}}))
    with ScriptedServer(scripted(info, then=http_response(503, "{}", {"Retry-After": "7"}))) as fake:
        with ApiClient(url=fake.address, retry=policy([])) as c:
            result = c.post_metrics(1, [Metric("x", 1)], batch_id="b-1", retry=False).result()
    assert [r.method for r in fake.requests] == ["GET", "POST"]
    assert not result.ok and result.retryable() == [0]
    assert result.error is not None and result.error.retry_after == 7.0
