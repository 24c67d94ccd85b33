"""Drop-in fidelity: where ``mlbench_core.api.ApiClient`` returns a Future, so does ours.

What upstream sends without a word (a run name with ``_``, no backend, a 51-character
metric name, ...) is sent as upstream sends it, with a :class:`DashboardWarning` naming
what the dashboard will do; ``ApiClient(strict=True)`` refuses it at the call instead.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, Callable
from urllib.parse import parse_qs

import pytest

from fakes import ScriptedServer, Seen, http_response
from mlbench_metrics import ApiClient, DashboardWarning
from mlbench_metrics.server import serve

from helpers import create_run

IMAGE = "PyTorch Cifar-10 ResNet-20"

Call = Callable[[ApiClient], "Future[Any]"]

# Calls upstream sends as they are, and words the warning (or the strict error) must contain.
UPSTREAM_SENDS: list[tuple[str, Call, list[str]]] = [
    (
        "run name with _ and no backend",
        lambda c: c.create_run("test_run", 5, image=IMAGE),
        ["invalid run name 'test_run'", "backend None", "304", "500"],
    ),
    ("unknown backend", lambda c: c.create_run("ok", 1, image=IMAGE, backend="carrier-pigeon"), ["'carrier-pigeon'"]),
    ("51-character metric name", lambda c: c.post_metric(1, "n" * 51, 1), ["51 characters", "PostgreSQL"]),
    ("empty metric name", lambda c: c.post_metric(1, "", 1), ["non-empty string", "500"]),
    ("256-character value", lambda c: c.post_metric(1, "x", "v" * 256), ["256 characters", "400"]),
    ("unparseable date", lambda c: c.post_metric(1, "x", 1, date="whenever"), ["whenever", "500"]),
    ("cumulative as a word", lambda c: c.post_metric(1, "x", 1, cumulative="maybe"), ["cumulative 'maybe'"]),
    ("unparseable since", lambda c: c.get_run_metrics(1, since="last tuesday"), ["last tuesday"]),
    ("negative last_n", lambda c: c.get_run_metrics(1, last_n=-1), ["last_n must be"]),
    ("summarize as a word", lambda c: c.get_pod_metrics("pod-0", summarize="ten"), ["summarize must be"]),  # type: ignore[arg-type]
]


@pytest.fixture
def recorder() -> Iterator[ScriptedServer]:
    """A server that answers 201 to everything and remembers what it was sent."""

    def script(seen: Seen, index: int) -> bytes:
        return http_response(201, json.dumps({"id": 7}))

    with ScriptedServer(script) as fake:
        yield fake


@pytest.mark.parametrize(("call", "words"), [case[1:] for case in UPSTREAM_SENDS], ids=[c[0] for c in UPSTREAM_SENDS])
def test_what_upstream_sends_is_sent_with_a_warning(recorder: ScriptedServer, call: Call, words: list[str]) -> None:
    with ApiClient(url=recorder.address) as client:
        with pytest.warns(DashboardWarning) as caught:
            future = call(client)
        assert isinstance(future, Future)
        assert future.result().status_code == 201
    assert len(recorder.requests) == 1
    (warning,) = caught
    assert warning.filename == __file__  # it points at the caller's line, not at the library
    text = str(warning.message)
    assert all(word in text for word in words), text
    assert "strict=True" in text


@pytest.mark.parametrize(("call", "words"), [case[1:] for case in UPSTREAM_SENDS], ids=[c[0] for c in UPSTREAM_SENDS])
def test_strict_refuses_it_at_the_call(recorder: ScriptedServer, call: Call, words: list[str]) -> None:
    with ApiClient(url=recorder.address, strict=True) as client:
        with pytest.raises(ValueError) as refused:
            call(client)
    assert all(word in str(refused.value) for word in words), refused.value
    assert recorder.requests == []


def test_the_bytes_are_upstreams(recorder: ScriptedServer) -> None:
    with ApiClient(url=recorder.address) as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", DashboardWarning)
        client.create_run("test_run", 5, image=IMAGE).result()
        client.post_metric(7, "n" * 51, 0.5, date="whenever").result()
        client.get_run_metrics(7, since="last tuesday", last_n=-1).result()
    run, metric, query = recorder.requests
    assert run.body.decode() == (  # what upstream sends: the name as given, no backend at all
        "name=test_run&num_workers=5&num_cpus=2.0&max_bandwidth=1000&gpu_enabled=false&light_target=false"
        "&run_all_nodes=false&image_name=mlbench%2Fpytorch-cifar10-resnet20-all-reduce%3Alatest"
    )
    fields = {k: v[0] for k, v in parse_qs(metric.body.decode(), keep_blank_values=True).items()}
    assert (fields["name"], fields["date"], fields["value"]) == ("n" * 51, "whenever", "0.5")
    assert {k: v[0] for k, v in query.query.items()} == {"metric_type": "run", "since": "last tuesday", "last_n": "-1"}


@pytest.mark.parametrize(("given", "sent"), [("False", "False"), ("false", "False"), ("0", "False"), ("true", "True")])
def test_cumulative_given_as_text_is_read_as_a_boolean(recorder: ScriptedServer, given: str, sent: str) -> None:
    with ApiClient(url=recorder.address, strict=True) as client:
        client.post_metric(7, "x", 1, cumulative=given).result()  # type: ignore[arg-type]
    (seen,) = recorder.requests
    assert parse_qs(seen.body.decode())["cumulative"] == [sent]


def test_the_dashboard_like_server_answers_what_it_refuses() -> None:
    with serve(extensions=False) as server, ApiClient(url=server.address) as client:
        run = create_run(server.url)
        with pytest.warns(DashboardWarning):
            created = client.create_run("test_run", 5, image=IMAGE).result()
        with pytest.warns(DashboardWarning):
            posted = client.post_metric(run["id"], "n" * 51, 1).result()
        assert (created.status_code, posted.status_code) == (400, 400)
        assert "invalid run name" in created.json()["message"].lower()
        assert server.store.count_metrics(run["id"]) == 0
