"""The embedded server's /api/runs/ endpoints, with the bodies the upstream client sends."""

from __future__ import annotations

import re

import requests

from mlbench_metrics.server import ServerHandle

from helpers import CUSTOM_RUN_BODY, DASHBOARD_RUN_KEYS, FORM, OFFICIAL_RUN_BODY, create_run, unique_name

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")
RUN_KEYS = [*DASHBOARD_RUN_KEYS, "started_at", "last_seen_at"]  # the run states extension's additions, last


def test_create_official_run_as_upstream_sends_it(fresh_server: ServerHandle) -> None:
    r = requests.post(f"{fresh_server.url}/api/runs/", data=OFFICIAL_RUN_BODY, headers=FORM)
    assert r.status_code == 201
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert list(body) == RUN_KEYS
    assert body["name"] == "run-official"
    assert body["state"] == "initialized"
    assert body["finished_at"] is None
    assert body["job_id"] == ""
    assert body["job_metadata"] == {}
    assert body["num_workers"] == 2
    assert ISO_Z.match(body["created_at"])
    # Compact JSON, as DRF renders it.
    assert b", " not in r.content and b": " not in r.content


def test_create_custom_run_as_upstream_sends_it(fresh_server: ServerHandle) -> None:
    r = requests.post(f"{fresh_server.url}/api/runs/", data=CUSTOM_RUN_BODY, headers=FORM)
    assert r.status_code == 201, r.text
    run = fresh_server.store.get_run(r.json()["id"])
    assert run is not None
    assert run["image"] == "me/img:1"
    assert run["command"] == "sleep 1"
    assert run["backend"] == "mybackend"
    assert run["run_on_all_nodes"] is True
    assert run["light_target"] is True
    assert run["cpu_limit"] == "2000.0m"


def test_backend_is_stored_lowercased(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url, backend="NCCL")
    stored = fresh_server.store.get_run(run["id"])
    assert stored is not None and stored["backend"] == "nccl"


def test_json_and_multipart_bodies_are_accepted(fresh_server: ServerHandle) -> None:
    fields = {
        "name": "json-run",
        "num_workers": 3,
        "image_name": "custom_image",
        "custom_image_name": "a/b",
        "custom_image_command": "true",
        "backend": "MPI",
    }
    r = requests.post(f"{fresh_server.url}/api/runs/", json=fields)
    assert r.status_code == 201, r.text
    assert r.json()["num_workers"] == 3
    fields["name"] = "multipart-run"
    r = requests.post(f"{fresh_server.url}/api/runs/", files={k: (None, str(v)) for k, v in fields.items()})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "multipart-run"


def test_list_is_ordered_by_id_without_job_metadata(fresh_server: ServerHandle) -> None:
    ids = [create_run(fresh_server.url)["id"] for _ in range(3)]
    fresh_server.store.update_run(ids[0], job_metadata={"stdout": ["hello"]})
    for path in ("/api/runs/", "/api/runs"):
        runs = requests.get(fresh_server.url + path).json()
        assert [r["id"] for r in runs] == ids
        assert all(list(r) == RUN_KEYS for r in runs)
        assert all(r["job_metadata"] == {} for r in runs)
    detail = requests.get(f"{fresh_server.url}/api/runs/{ids[0]}").json()
    assert detail["job_metadata"] == {"stdout": ["hello"]}


def test_get_and_delete_with_and_without_slash(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    for path in (f"/api/runs/{run['id']}", f"/api/runs/{run['id']}/"):
        r = requests.get(fresh_server.url + path)
        assert r.status_code == 200
        assert r.json()["id"] == run["id"]
    requests.post(
        f"{fresh_server.url}/api/metrics/",
        data={
            "run_id": run["id"],
            "name": "x",
            "value": 1,
            "date": "2026-01-01 00:00:00",
            "metadata": "",
            "cumulative": False,
        },
    )
    r = requests.delete(f"{fresh_server.url}/api/runs/{run['id']}")
    assert r.status_code == 204
    assert r.content == b""
    assert "Content-Length" not in r.headers
    assert fresh_server.store.count_metrics() == 0, "a run's metrics go with it"
    r = requests.get(f"{fresh_server.url}/api/runs/{run['id']}/")
    assert r.status_code == 404
    assert r.json()["status"] == "Not Found"
    assert requests.delete(f"{fresh_server.url}/api/runs/{run['id']}/").status_code == 404
    assert requests.get(f"{fresh_server.url}/api/runs/abc/").status_code == 404


def test_other_methods_on_a_run_are_405(server: ServerHandle) -> None:
    run = create_run(server.url)
    r = requests.put(f"{server.url}/api/runs/{run['id']}/", data={"name": "x"})
    assert r.status_code == 405
    assert r.json()["detail"] == 'Method "PUT" not allowed.'
    assert r.json()["status"] == "Method Not Allowed"
    assert "GET" in r.headers["Allow"]


def test_invalid_run_names_are_refused(server: ServerHandle) -> None:
    for bad in ("bad name", "-lead", "trail-", "under_score", "x" * 101, ""):
        r = requests.post(
            f"{server.url}/api/runs/",
            data={
                "name": bad,
                "num_workers": 1,
                "image_name": "custom_image",
                "custom_image_name": "a",
                "custom_image_command": "b",
                "backend": "MPI",
            },
        )
        assert r.status_code == 400, bad
        assert r.json() == {"status": "ERROR", "message": f"Invalid run name {bad}"}
    # Upper case is valid: the dashboard lowercases before matching but stores as given.
    run = create_run(server.url, name="Mixed-Case-" + unique_name())
    assert run["name"].startswith("Mixed-Case-")


def test_run_field_errors_are_clear(server: ServerHandle) -> None:
    base = {
        "name": unique_name(),
        "num_workers": 1,
        "image_name": "custom_image",
        "custom_image_name": "a",
        "custom_image_command": "b",
        "backend": "MPI",
    }
    cases = [
        ({"image_name": "mlbench/unknown:latest"}, "unknown image"),
        ({"backend": "smoke-signals"}, "unknown backend"),
        ({"num_workers": "two"}, "num_workers"),
        ({"num_workers": 0}, "num_workers"),
        ({"num_cpus": "lots"}, "num_cpus"),
        ({"gpu_enabled": "maybe"}, "gpu_enabled"),
        ({"backend": "custom_backend"}, "custom_backend"),
    ]
    for change, needle in cases:
        r = requests.post(f"{server.url}/api/runs/", data={**base, **change})
        assert r.status_code == 400, (change, r.text)
        assert needle in r.json()["message"]
    for missing in ("name", "num_workers", "image_name", "backend"):
        data = {k: v for k, v in base.items() if k != missing}
        r = requests.post(f"{server.url}/api/runs/", data=data)
        assert r.status_code == 400
        assert r.json()["message"] == f"field '{missing}' is required"


def test_mark_run_finished_and_failed(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    r = requests.patch(f"{fresh_server.url}/api/runs/{run['id']}/", json={"state": "finished"})
    assert r.status_code == 200
    assert r.json()["state"] == "finished"
    assert ISO_Z.match(r.json()["finished_at"])
    r = requests.patch(f"{fresh_server.url}/api/runs/{run['id']}", data={"state": "failed"})
    assert r.json()["state"] == "failed"
    r = requests.patch(f"{fresh_server.url}/api/runs/{run['id']}", json={"state": "exploded"})
    assert r.status_code == 400
    assert requests.patch(f"{fresh_server.url}/api/runs/999/", json={"state": "failed"}).status_code == 404


def test_pods_list_and_register(fresh_server: ServerHandle) -> None:
    assert requests.get(f"{fresh_server.url}/api/pods/").json() == []
    r = requests.post(
        f"{fresh_server.url}/api/pods",
        json={"name": "rel-mlbench-worker-0", "labels": {"app": "mlbench"}, "phase": "Running", "ip": "127.0.0.1"},
    )
    assert r.status_code == 201
    pods = requests.get(f"{fresh_server.url}/api/pods").json()
    assert pods == [
        {"name": "rel-mlbench-worker-0", "labels": "{'app': 'mlbench'}", "phase": "Running", "ip": "127.0.0.1"}
    ]


def test_api_root_names_the_server(server: ServerHandle) -> None:
    r = requests.get(f"{server.url}/api/")
    assert r.status_code == 200
    assert r.json()["runs"].endswith("/api/runs/")
    assert r.json()["server"]["name"] == "mlbench-metrics"
    assert r.headers["Server"].startswith("mlbench-metrics/")
    assert server.url.startswith("http://127.0.0.1:")
