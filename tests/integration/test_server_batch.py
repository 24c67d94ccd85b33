"""The batch endpoint extension: rows, columns, one transaction, duplicates dropped."""

from __future__ import annotations

from typing import Any

import requests

from mlbench_metrics.server import ServerHandle

from helpers import create_run


def batch_url(server: ServerHandle) -> str:
    return f"{server.url}/api/metrics/batch/"


def test_batch_info_describes_the_endpoint(server: ServerHandle) -> None:
    for path in ("/api/metrics/batch/", "/api/metrics/batch"):
        info = requests.get(server.url + path).json()
        assert info["batch"] is True
        assert info["formats"] == ["rows", "columns", "packed"]
        assert info["max_metrics"] > 0


def test_rows_form(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    body = {
        "run_id": run["id"],
        "batch_id": "rows-1",
        "metrics": [
            {
                "name": "loss @ 0",
                "value": "0.5",
                "date": "2026-11-27 01:00:27.108829",
                "metadata": "",
                "cumulative": False,
            },
            {
                "name": "acc @ 0",
                "value": 12,
                "date": "2021-01-02T03:04:05Z",
                "metadata": {"rank": 0},
                "cumulative": True,
            },
            {"name": "loss @ 0", "value": "0.25", "date": "2026-11-27T01:00:28Z"},
        ],
    }
    r = requests.post(batch_url(fresh_server), json=body)
    assert r.status_code == 201
    assert r.json() == {"status": "Created", "stored": 3, "duplicate": False, "batch_id": "rows-1"}
    series = requests.get(f"{fresh_server.url}/api/metrics/{run['id']}", params={"metric_type": "run"}).json()
    assert [p["value"] for p in series["loss @ 0"]] == ["0.5", "0.25"]
    assert series["acc @ 0"] == [{"date": "2021-01-02T03:04:05Z", "value": "12", "cumulative": True}]


def test_columns_form_with_shared_metadata(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    body = {
        "run_id": run["id"],
        "batch_id": "cols-1",
        "columns": {
            "name": ["a", "b", "a"],
            "value": ["1", "2", "3"],
            "date_us": [1_700_000_000_000_000, 1_700_000_000_000_001, 1_700_000_001_000_000],
            "metadata": '{"rank": 1}',
            "cumulative": [False, True, False],
        },
    }
    r = requests.post(batch_url(fresh_server), json=body)
    assert r.status_code == 201
    assert r.json()["stored"] == 3
    series = requests.get(f"{fresh_server.url}/api/metrics/{run['id']}", params={"metric_type": "run"}).json()
    assert series == {
        "a": [
            {"date": "2023-11-14T22:13:20Z", "value": "1", "cumulative": False},
            {"date": "2023-11-14T22:13:21Z", "value": "3", "cumulative": False},
        ],
        "b": [{"date": "2023-11-14T22:13:20.000001Z", "value": "2", "cumulative": True}],
    }
    all_metrics = requests.get(f"{fresh_server.url}/api/metrics/").json()
    assert all_metrics["run_metrics"][run["name"]]["a"][0]["metadata"] == '{"rank": 1}'


def test_a_repeated_batch_id_is_stored_once(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    body = {
        "run_id": run["id"],
        "batch_id": "same",
        "columns": {"name": ["x"] * 10, "value": ["1"] * 10, "date_us": list(range(10))},
    }
    first = requests.post(batch_url(fresh_server), json=body)
    second = requests.post(batch_url(fresh_server), json=body)
    assert first.status_code == 201 and first.json()["duplicate"] is False
    assert second.status_code == 200
    assert second.json() == {"status": "OK", "stored": 0, "duplicate": True, "batch_id": "same"}
    assert fresh_server.store.count_metrics(run["id"]) == 10
    # Without a batch id there is no de-duplication.
    del body["batch_id"]
    requests.post(batch_url(fresh_server), json=body)
    requests.post(batch_url(fresh_server), json=body)
    assert fresh_server.store.count_metrics(run["id"]) == 30


def test_one_bad_metric_stores_nothing(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {
                "metrics": [
                    {"name": "ok", "value": "1", "date": "2026-01-01"},
                    {"name": "bad", "value": "1", "date": "never"},
                ]
            },
            "metrics[1]",
        ),
        ({"metrics": [{"name": "n" * 51, "value": "1", "date": "2026-01-01"}]}, "metrics[0]"),
        ({"metrics": [{"value": "1", "date": "2026-01-01"}]}, "'name' is required"),
        ({"metrics": "nope"}, "list"),
        ({"columns": {"name": ["a", ""], "value": ["1", "2"], "date_us": [1, 2]}}, "columns.name[1]"),
        ({"columns": {"name": ["a", "b"], "value": ["1"], "date_us": [1, 2]}}, "'value' has 1"),
        ({"columns": {"name": ["a", "b"], "value": ["1", "v" * 300], "date_us": [1, 2]}}, "columns.value[1]"),
        ({"columns": {"name": ["a", "b"], "value": ["1", "2"], "date_us": [1, "2"]}}, "columns.date_us[1]"),
        ({"columns": {"name": ["a", "b"], "value": ["1", "2"], "date": ["2026-01-01", "later"]}}, "columns.date[1]"),
        ({"columns": {"name": ["a"], "value": ["1"]}}, "date"),
        ({"columns": {"name": ["a"], "value": ["1"], "date_us": [1], "cumulative": "yes"}}, "cumulative"),
        ({"columns": {"name": ["a"], "value": [True], "date_us": [1]}}, "columns.value[0]"),
        ({}, "'metrics'"),
    ]
    for extra, needle in cases:
        r = requests.post(batch_url(fresh_server), json={"run_id": run["id"], **extra})
        assert r.status_code == 400, (extra, r.text)
        assert needle in r.json()["message"], (needle, r.json()["message"])
    assert fresh_server.store.count_metrics() == 0


def test_batch_errors(fresh_server: ServerHandle) -> None:
    body = {"run_id": 4242, "batch_id": "b", "columns": {"name": ["a"], "value": ["1"], "date_us": [1]}}
    r = requests.post(batch_url(fresh_server), json=body)
    assert r.status_code == 404
    # The batch id of a refused batch is not burnt: it can be sent again once the run exists.
    run = create_run(fresh_server.url)
    body["run_id"] = run["id"]
    assert requests.post(batch_url(fresh_server), json=body).status_code == 201
    r = requests.post(batch_url(fresh_server), data={"run_id": run["id"]})
    assert r.status_code == 415
    r = requests.post(batch_url(fresh_server), json={"run_id": run["id"], "batch_id": "", "metrics": []})
    assert r.status_code == 400
    too_many = {
        "run_id": run["id"],
        "columns": {"name": ["a"] * 100_001, "value": ["1"] * 100_001, "date_us": [1] * 100_001},
    }
    assert requests.post(batch_url(fresh_server), json=too_many).status_code == 413
