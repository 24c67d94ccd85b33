"""ApiClient against the embedded server, and its bytes on the wire against PROTOCOL.md."""

from __future__ import annotations

import datetime as dt
import io
import json
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future
from urllib.parse import parse_qs

import pytest
import requests

from fakes import ScriptedServer, Seen, http_response
from mlbench_metrics import RetryPolicy
from mlbench_metrics.api import MLBENCH_BACKENDS, MLBENCH_IMAGES, ApiClient, BatchResult
from mlbench_metrics.errors import ClientApiError, ClosedError, TransientApiError
from mlbench_metrics.records import Metric, MetricBatch
from mlbench_metrics.server import ServerHandle, serve

from helpers import CUSTOM_RUN_BODY, METRIC_BODY_1, METRIC_BODY_2, OFFICIAL_RUN_BODY, create_run, unique_name


@pytest.fixture
def client(server: ServerHandle) -> Iterator[ApiClient]:
    with ApiClient(url=server.address) as c:
        yield c


def test_endpoint_forms() -> None:
    cases = {
        "127.0.0.1:8080": "http://127.0.0.1:8080/api/",
        "127.0.0.1:8080/": "http://127.0.0.1:8080/api/",
        "127.0.0.1:8080/mlbench": "http://127.0.0.1:8080/mlbench/api/",
        "https://127.0.0.1:8443/x/": "https://127.0.0.1:8443/x/api/",
        "http://localhost:1": "http://localhost:1/api/",
    }
    for url, endpoint in cases.items():
        with ApiClient(url=url) as c:
            assert c.endpoint == endpoint
    for bad in ("", "ftp://127.0.0.1/"):
        with pytest.raises(ValueError):
            ApiClient(url=bad)


def test_images_and_backends_match_upstream() -> None:
    assert MLBENCH_BACKENDS == ["MPI", "GLOO", "NCCL"]
    assert MLBENCH_IMAGES["PyTorch Cifar-10 ResNet-20"][0] == "mlbench/pytorch-cifar10-resnet20-all-reduce:latest"
    assert all(isinstance(v, tuple) and len(v) == 3 for v in MLBENCH_IMAGES.values())
    assert "{run_id}" in MLBENCH_IMAGES["PyTorch Linear Logistic Regression"][1]


def test_runs_lifecycle(client: ApiClient, server: ServerHandle) -> None:
    name = unique_name("api")
    future = client.create_run(name, 2, image="PyTorch Cifar-10 ResNet-20", backend="MPI", gpu_enabled=True)
    assert isinstance(future, Future)
    response = future.result()
    assert isinstance(response, requests.Response)
    assert response.status_code == 201
    run = response.json()
    assert run["name"] == name and run["num_workers"] == 2
    assert any(r["id"] == run["id"] for r in client.get_runs().result().json())
    assert client.get_run(run["id"]).result().json()["state"] == "initialized"
    assert client.get_worker_pods().result().json() == []
    assert client.delete_run(run["id"]).result().status_code == 204
    assert client.get_run(run["id"]).result().status_code == 404


def test_custom_run_and_backend_case(client: ApiClient, server: ServerHandle) -> None:
    r = client.create_run(unique_name(), 1, custom_image_name="me/img:1", custom_image_command="true", backend="gloo")
    assert r.result().status_code == 201
    stored = server.store.get_run(r.result().json()["id"])
    assert stored is not None and stored["backend"] == "gloo"
    r = client.create_run(
        unique_name(), 1, custom_image_name="x", custom_image_command="true", custom_backend="horovod"
    )
    stored = server.store.get_run(r.result().json()["id"])
    assert stored is not None and stored["backend"] == "horovod"


def test_create_run_refuses_what_upstream_refuses(client: ApiClient) -> None:
    with pytest.raises(ValueError, match="not found"):
        client.create_run("ok", 1, image="No Such Image", backend="MPI")
    with pytest.raises(ValueError, match="mutually exclusive"):
        client.create_run("ok", 1, image="PyTorch Cifar-10 ResNet-20", backend="MPI", custom_backend="x")


def test_metrics_round_trip(client: ApiClient, server: ServerHandle) -> None:
    run = create_run(server.url)
    base = dt.datetime(2099, 11, 27, 1, 0, 0)  # after the run's creation, so the zip includes them
    for i in range(6):
        r = client.post_metric(run["id"], "loss @ 0", 1.0 / (i + 1), date=base + dt.timedelta(seconds=i)).result()
        assert r.status_code == 201
    client.post_metric(run["id"], "samples @ 0", 64, cumulative=True, metadata={"rank": 0}, date=base).result()
    body = client.get_run_metrics(run["id"]).result().json()
    assert len(body["loss @ 0"]) == 6
    assert body["samples @ 0"] == [{"date": "2099-11-27T01:00:00Z", "value": "64", "cumulative": True}]
    since = client.get_run_metrics(run["id"], since=base + dt.timedelta(seconds=4)).result().json()
    assert [p["date"] for p in since["loss @ 0"]] == ["2099-11-27T01:00:04Z", "2099-11-27T01:00:05Z"]
    since_text = client.get_run_metrics(run["id"], since="2099-11-27 01:00:05").result().json()
    assert len(since_text["loss @ 0"]) == 1
    summary = client.get_run_metrics(run["id"], summarize=3, metric_filter="loss @ 0", last_n=2).result().json()
    assert list(summary) == ["loss @ 0"] and len(summary["loss @ 0"]) == 2
    zipped = client.download_run_metrics(run["id"]).result()
    assert zipped.status_code == 200
    assert "result_loss @ 0.json" in zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()
    everything = client.get_all_metrics().result().json()
    assert len(everything["run_metrics"][run["name"]]["loss @ 0"]) == 6
    all_md = everything["run_metrics"][run["name"]]["samples @ 0"][0]["metadata"]
    assert json.loads(all_md) == {"rank": 0}


def test_pod_metrics(client: ApiClient, server: ServerHandle) -> None:
    requests.post(f"{server.url}/api/pods/", json={"name": "api-pod-0"})
    requests.post(
        f"{server.url}/api/metrics/",
        data={
            "pod_name": "api-pod-0",
            "name": "cpu",
            "value": "0.5",
            "date": "2026-01-01 00:00:00",
            "metadata": "",
            "cumulative": False,
        },
    )
    body = client.get_pod_metrics("api-pod-0", since=dt.datetime(2025, 1, 1), summarize=10).result().json()
    assert body == {"cpu": [{"date": "2026-01-01T00:00:00Z", "value": "0.5", "cumulative": False}]}


def test_bad_arguments_upstream_refuses_fail_at_the_call(client: ApiClient) -> None:
    with pytest.raises(ValueError):
        client._get_filtered_metrics()
    with pytest.raises(ValueError):
        ApiClient(url="127.0.0.1:1", max_workers=0)


# -- the bytes on the wire --------------------------------------------------------------


@pytest.fixture
def recorder() -> Iterator[ScriptedServer]:
    def script(seen: Seen, index: int) -> bytes:
        return http_response(201, json.dumps({"id": 7, "name": "x"}))

    with ScriptedServer(script) as fake:
        yield fake


def test_create_run_bodies_are_upstreams(recorder: ScriptedServer) -> None:
    with ApiClient(url=recorder.address) as c:
        c.create_run(
            "run-official", 2, num_cpus=1.5, image="PyTorch Cifar-10 ResNet-20", backend="MPI", gpu_enabled=True
        ).result()
        c.create_run(
            "run-custom",
            1,
            custom_image_name="me/img:1",
            custom_image_command="sleep 1",
            custom_backend="mybackend",
            run_all_nodes=True,
            light_target=True,
        ).result()
    official, custom = recorder.requests
    assert (official.method, official.path) == ("POST", "/api/runs/")
    assert official.headers["content-type"] == "application/x-www-form-urlencoded"
    assert official.body.decode() == OFFICIAL_RUN_BODY
    assert custom.body.decode() == CUSTOM_RUN_BODY


def test_post_metric_bodies_are_upstreams(recorder: ScriptedServer) -> None:
    with ApiClient(url=recorder.address) as c:
        c.post_metric(7, "loss @ 0", 0.5, date=dt.datetime(2026, 11, 27, 1, 0, 27, 108829)).result()
        c.post_metric(
            7, "acc @ 0", 12, cumulative=True, metadata="{rank: 0, epoch:1.5}", date=dt.datetime(2021, 1, 2, 3, 4, 5)
        ).result()
        c.post_metric(7, "nan @ 0", float("nan"), metadata={"rank": 0, "epoch": 1}).result()
    first, second, third = recorder.requests
    assert first.path == "/api/metrics/"
    assert first.body.decode() == METRIC_BODY_1.format(run_id=7)
    assert second.body.decode() == METRIC_BODY_2.format(run_id=7)
    fields = {k: v[0] for k, v in parse_qs(third.body.decode(), keep_blank_values=True).items()}
    assert list(fields) == ["run_id", "name", "cumulative", "date", "value", "metadata"]
    assert fields["value"] == "nan"
    assert json.loads(fields["metadata"]) == {"rank": 0, "epoch": 1}
    dt.datetime.strptime(fields["date"], "%Y-%m-%d %H:%M:%S.%f")  # str(datetime.utcnow()), as upstream


def test_query_parameters_use_the_format_the_dashboard_parses(recorder: ScriptedServer) -> None:
    with ApiClient(url=recorder.address) as c:
        c.get_run_metrics(
            5, since=dt.datetime(2026, 11, 27, 1, 1, 8, 170323), summarize=100, metric_filter="a @ 0", last_n=1
        ).result()
        c.get_pod_metrics(
            "rel-mlbench-worker-0", since=dt.datetime(2026, 11, 27, 3, 1, 8, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        ).result()
        c.download_run_metrics(5).result()
        c.get_all_metrics().result()
        c.get_runs().result()
        c.get_run(5).result()
        c.delete_run(5).result()
        c.get_worker_pods().result()
    seen = [(r.method, r.path, {k: v[0] for k, v in r.query.items()}) for r in recorder.requests]
    assert seen == [
        (
            "GET",
            "/api/metrics/5/",
            {
                "metric_type": "run",
                "since": "2026-11-27T01:01:08.170323Z",
                "summarize": "100",
                "metric_filter": "a @ 0",
                "last_n": "1",
            },
        ),
        ("GET", "/api/metrics/rel-mlbench-worker-0/", {"metric_type": "pod", "since": "2026-11-27T01:01:08.000000Z"}),
        ("GET", "/api/metrics/5/", {"metric_type": "run", "format": "zip"}),
        ("GET", "/api/metrics/", {}),
        ("GET", "/api/runs/", {}),
        ("GET", "/api/runs/5/", {}),
        ("DELETE", "/api/runs/5/", {}),
        ("GET", "/api/pods/", {}),
    ]
    assert all(r.headers["user-agent"].startswith("mlbench-metrics/") for r in recorder.requests)


def test_bearer_token_is_sent() -> None:
    with serve(token="tok") as guarded:
        with ApiClient(url=guarded.address, token="tok") as c:
            assert c.get_runs().result().status_code == 200
        with ApiClient(url=guarded.address) as c:
            assert c.get_runs().result().status_code == 401


def test_connections_are_pooled_and_reused(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    with ApiClient(url=fresh_server.address, max_workers=3) as c:
        futures = [c.post_metric(run["id"], "m", i) for i in range(60)]
        assert all(f.result().status_code == 201 for f in futures)
        futures = [c.get_run(run["id"]) for _ in range(20)]
        assert all(f.result().status_code == 200 for f in futures)
    assert fresh_server.connections_accepted <= 3 + 1  # the helper's own connection


# -- post_metrics ------------------------------------------------------------------------


def test_post_metrics_uses_the_batch_endpoint(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    with ApiClient(url=fresh_server.address) as c:
        assert c.batch_supported is None
        metrics = [Metric("loss @ 0", 1.0 / (i + 1), date=1_700_000_000_000_000 + i) for i in range(2500)]
        result = c.post_metrics(run["id"], metrics, batch_id="first").result()
        assert isinstance(result, BatchResult)
        assert (result.ok, result.stored, result.total, result.duplicate) == (True, 2500, 2500, False)
        assert c.batch_supported is True
        again = c.post_metrics(run["id"], metrics, batch_id="first").result()
        assert again.ok and again.duplicate and again.stored == 0
        mapping = c.post_metrics(run["id"], [{"name": "acc", "value": 0.9, "metadata": {"rank": 0}}]).result()
        assert mapping.ok and mapping.stored == 1
    assert fresh_server.store.count_metrics(run["id"]) == 2501


def test_post_metrics_fans_out_without_a_batch_endpoint() -> None:
    with serve(extensions=False) as dashboard_like:
        run = create_run(dashboard_like.url)
        with ApiClient(url=dashboard_like.address) as c:
            batch = MetricBatch()
            for i in range(40):
                batch.append("loss @ 0", str(i), 1_700_000_000_000_000 + i, '{"rank": 0}', False)
            result = c.post_metrics(run["id"], batch).result()
            assert c.batch_supported is False
            assert result.ok and result.stored == 40
            assert c.post_metrics(run["id"], batch).result().stored == 40  # at least once, no dedup here
        assert dashboard_like.store.count_metrics(run["id"]) == 80


def test_post_metrics_reports_partial_failure() -> None:
    def script(seen: Seen, index: int) -> bytes:
        if seen.method == "GET":  # the dashboard's API root lists its routes, nothing more
            return http_response(
                200, json.dumps({"pods": "/api/pods/", "runs": "/api/runs/", "metrics": "/api/metrics/"})
            )
        if b"name=bad" in seen.body:
            return http_response(400, json.dumps({"status": "Bad Request", "message": "nope"}))
        return http_response(201, "{}")

    with ScriptedServer(script) as fake, ApiClient(url=fake.address) as c:
        metrics = [Metric("good", 1), Metric("bad", 2), Metric("good", 3)]
        result = c.post_metrics(1, metrics).result()
    assert result.stored == 2 and not result.ok
    assert list(result.failed) == [1]
    assert isinstance(result.failed[1], ClientApiError)
    assert result.failed[1].status_code == 400
    assert result.rejected() == [1] and result.retryable() == []


def test_post_metrics_transport_failure_is_retryable() -> None:
    with ApiClient(url="127.0.0.1:9", retry=RetryPolicy.none()) as c:
        result = c.post_metrics(1, [Metric("x", 1), Metric("y", 2)]).result()
    assert result.stored == 0 and result.retryable() == [0, 1]
    assert isinstance(result.error, TransientApiError)


def test_closed_client_refuses_new_calls(server: ServerHandle) -> None:
    c = ApiClient(url=server.address)
    c.close()
    c.close()
    assert c.closed
    with pytest.raises(ClosedError):
        c.get_runs()
    with pytest.raises(ClosedError):
        c.post_metrics(1, [Metric("x", 1)])


def test_a_missing_run_on_the_batch_endpoint_is_refused_not_taken_for_a_missing_endpoint(server: ServerHandle) -> None:
    # A 404 from /api/metrics/batch/ meant "no such endpoint" and switched the client to
    # single posts for good, although the server had only said that the run is unknown.
    with ApiClient(url=server.address) as client:
        result = client.post_metrics(999_999_999, [Metric("loss", 0.5)]).result(timeout=30)
        assert not result.ok and result.rejected() == [0]
        assert client.batch_supported is True
