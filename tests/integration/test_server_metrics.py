"""The embedded server's /api/metrics/ endpoints: posting, filtering, summarizing, zip."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
import requests

from mlbench_metrics.server import ServerHandle

from helpers import FORM, METRIC_BODY_1, METRIC_BODY_2, create_run


def post(server: ServerHandle, run_id: int, name: str, value: Any, date: str, **extra: Any) -> requests.Response:
    data = {"run_id": run_id, "name": name, "value": value, "date": date, "metadata": "", "cumulative": False}
    data.update(extra)
    return requests.post(f"{server.url}/api/metrics/", data=data)


def test_post_metric_exactly_as_upstream(server: ServerHandle) -> None:
    run = create_run(server.url)
    r = requests.post(f"{server.url}/api/metrics/", data=METRIC_BODY_1.format(run_id=run["id"]), headers=FORM)
    assert r.status_code == 201
    assert r.json() == {
        "name": "loss @ 0",
        "value": "0.5",
        "date": "2026-11-27T01:00:27.108829Z",
        "metadata": "",
        "cumulative": False,
    }
    assert list(r.json()) == ["name", "value", "date", "metadata", "cumulative"]
    r = requests.post(f"{server.url}/api/metrics/", data=METRIC_BODY_2.format(run_id=run["id"]), headers=FORM)
    assert r.status_code == 201
    assert r.json() == {
        "name": "acc @ 0",
        "value": "12",
        "date": "2021-01-02T03:04:05.000000Z",
        "metadata": "{rank: 0, epoch:1.5}",
        "cumulative": True,
    }


def test_retrieve_uses_drf_dates_and_point_shape(server: ServerHandle) -> None:
    run = create_run(server.url)
    post(server, run["id"], "loss @ 0", 2.0, "2026-11-27T01:00:58.170323Z")
    post(server, run["id"], "loss @ 0", 1.0, "2026-11-27 01:00:59")
    post(server, run["id"], "acc @ 0", "abc", "2026-11-27 01:00:59+02:00")
    for path in (f"/api/metrics/{run['id']}/", f"/api/metrics/{run['id']}"):
        body = requests.get(server.url + path, params={"metric_type": "run"}).json()
        assert body == {
            "acc @ 0": [{"date": "2026-11-26T23:00:59Z", "value": "abc", "cumulative": False}],
            "loss @ 0": [
                {"date": "2026-11-27T01:00:58.170323Z", "value": "2.0", "cumulative": False},
                {"date": "2026-11-27T01:00:59Z", "value": "1.0", "cumulative": False},
            ],
        }


def test_values_are_stored_verbatim(server: ServerHandle) -> None:
    run = create_run(server.url)
    for value in ("abc", "nan", "inf", "-inf", "1e-300"):
        assert post(server, run["id"], "v", value, "2026-01-01 00:00:00").status_code == 201
    body = requests.get(f"{server.url}/api/metrics/{run['id']}/", params={"metric_type": "run"}).json()
    assert [p["value"] for p in body["v"]] == ["abc", "nan", "inf", "-inf", "1e-300"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("True", True),
        ("False", False),
        ("true", True),
        ("false", False),
        ("t", True),
        ("f", False),
        ("1", True),
        ("0", False),
    ],
)
def test_cumulative_spellings(server: ServerHandle, given: str, stored: bool) -> None:
    run = create_run(server.url)
    r = post(server, run["id"], "c", 1, "2026-01-01 00:00:00", cumulative=given)
    assert r.status_code == 201
    assert r.json()["cumulative"] is stored


def test_metric_errors_are_4xx_with_a_message(server: ServerHandle) -> None:
    run = create_run(server.url)
    good = {
        "run_id": run["id"],
        "name": "x",
        "value": 1,
        "date": "2026-01-01 00:00:00",
        "metadata": "",
        "cumulative": "False",
    }
    r = requests.post(f"{server.url}/api/metrics/", data={k: v for k, v in good.items() if k != "run_id"})
    assert r.status_code == 400
    assert r.json()["message"] == "Run ID has to be supplied"
    assert r.json()["status"] == "Bad Request"
    assert "data" in r.json()
    for field in ("name", "value", "date", "metadata", "cumulative"):
        r = requests.post(f"{server.url}/api/metrics/", data={k: v for k, v in good.items() if k != field})
        assert r.status_code == 400
        assert r.json()["message"] == f"field '{field}' is required"
    cases = [
        ({"run_id": "seven"}, 400, "run_id"),
        ({"run_id": 987654}, 404, "not found"),
        ({"date": "yesterday"}, 400, "unparseable date"),
        ({"date": "2026-02-30 00:00:00"}, 400, "impossible date"),
        ({"cumulative": "maybe"}, 400, "cumulative"),
        ({"name": "n" * 51}, 400, "limit is 50"),
        ({"name": ""}, 400, "non-empty"),
        ({"value": "v" * 256}, 400, "limit is 255"),
    ]
    for change, status, needle in cases:
        r = requests.post(f"{server.url}/api/metrics/", data={**good, **change})
        assert r.status_code == status, (change, r.text)
        assert needle in r.json()["message"], (change, r.text)


def test_json_metadata_object_is_kept_as_json_text(server: ServerHandle) -> None:
    run = create_run(server.url)
    r = requests.post(
        f"{server.url}/api/metrics/",
        json={
            "run_id": run["id"],
            "name": "m",
            "value": 0.5,
            "date": "2026-01-01T00:00:00Z",
            "metadata": {"rank": 0, "epoch": 1},
            "cumulative": False,
        },
    )
    assert r.status_code == 201
    assert json.loads(r.json()["metadata"]) == {"rank": 0, "epoch": 1}
    assert r.json()["value"] == "0.5"


def _series(server: ServerHandle, run_id: int, **params: Any) -> dict[str, Any]:
    r = requests.get(f"{server.url}/api/metrics/{run_id}", params={"metric_type": "run", **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_since_accepts_every_format(server: ServerHandle) -> None:
    run = create_run(server.url)
    for second in range(5):
        post(server, run["id"], "m", second, f"2026-11-27 01:01:0{second}.170323")
    for since in (
        "2026-11-27T01:01:02.170323Z",  # what the dashboard emits and parses
        "2026-11-27 01:01:02.170323",  # what the upstream client sends (str(datetime))
        "2026-11-27T03:01:02.170323+02:00",  # ISO 8601 with an offset
    ):
        body = _series(server, run["id"], since=since)
        assert [p["value"] for p in body["m"]] == ["2", "3", "4"], since
    assert _series(server, run["id"], since="2030-01-01") == {}
    r = requests.get(f"{server.url}/api/metrics/{run['id']}", params={"metric_type": "run", "since": "soon"})
    assert r.status_code == 400


def test_summarize_keeps_the_trailing_partial_group(server: ServerHandle) -> None:
    run = create_run(server.url)
    for i in range(11):
        post(server, run["id"], "m", float(i), f"2026-11-27 01:00:{i:02d}")
    body = _series(server, run["id"], summarize=5)
    # ceil(11 / 5) = 3 points a group: [0,1,2] [3,4,5] [6,7,8] and the partial [9,10].
    assert [p["value"] for p in body["m"]] == ["1.0", "4.0", "7.0", "9.5"]
    assert [p["date"] for p in body["m"]] == [
        "2026-11-27T01:00:00Z",
        "2026-11-27T01:00:03Z",
        "2026-11-27T01:00:06Z",
        "2026-11-27T01:00:09Z",
    ]
    assert len(_series(server, run["id"], summarize=11)["m"]) == 11  # not fewer than the points: unchanged
    assert [p["value"] for p in _series(server, run["id"], summarize=5, last_n=2)["m"]] == ["7.0", "9.5"]
    assert len(_series(server, run["id"], last_n=0)["m"]) == 11


def test_summarize_non_numeric_and_bad_parameters(server: ServerHandle) -> None:
    run = create_run(server.url)
    for i in range(4):
        post(server, run["id"], "text", "abc", f"2026-11-27 01:00:{i:02d}")
    for params in ({"summarize": 2}, {"summarize": "two"}, {"summarize": -1}, {"last_n": "x"}, {"last_n": -3}):
        r = requests.get(f"{server.url}/api/metrics/{run['id']}", params={"metric_type": "run", **params})
        assert r.status_code == 400, params
        assert r.json()["message"]


def test_metric_filter_and_last_n(server: ServerHandle) -> None:
    run = create_run(server.url)
    for i in range(4):
        post(server, run["id"], "a @ 0", i, f"2026-11-27 01:00:{i:02d}")
        post(server, run["id"], "b @ 0", i, f"2026-11-27 01:00:{i:02d}")
    body = _series(server, run["id"], metric_filter="a @ 0", last_n=1)
    assert body == {"a @ 0": [{"date": "2026-11-27T01:00:03Z", "value": "3", "cumulative": False}]}


def test_unknown_run_or_pod_is_404(server: ServerHandle) -> None:
    assert requests.get(f"{server.url}/api/metrics/424242", params={"metric_type": "run"}).status_code == 404
    assert requests.get(f"{server.url}/api/metrics/no-such-pod").status_code == 404
    assert requests.get(f"{server.url}/api/metrics/no-such-pod", params={"metric_type": "pod"}).status_code == 404


def test_pod_metrics(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    requests.post(f"{fresh_server.url}/api/pods/", json={"name": "w-0", "run_id": run["id"]})
    r = requests.post(
        f"{fresh_server.url}/api/metrics/",
        data={
            "pod_name": "w-0",
            "name": "cpu",
            "value": "0.0",
            "date": "2026-01-01 00:00:00",
            "metadata": "",
            "cumulative": False,
        },
    )
    assert r.status_code == 201
    r = requests.post(
        f"{fresh_server.url}/api/metrics/",
        data={
            "pod_name": "nope",
            "name": "cpu",
            "value": "0.0",
            "date": "2026-01-01 00:00:00",
            "metadata": "",
            "cumulative": False,
        },
    )
    assert r.status_code == 404
    expected = {"cpu": [{"date": "2026-01-01T00:00:00Z", "value": "0.0", "cumulative": False}]}
    assert requests.get(f"{fresh_server.url}/api/metrics/w-0").json() == expected
    assert requests.get(f"{fresh_server.url}/api/metrics/w-0/", params={"metric_type": "pod"}).json() == expected


def test_all_metrics_keyed_by_run_name_and_pod(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url, name="full-run")
    create_run(fresh_server.url, name="empty-run")
    requests.post(f"{fresh_server.url}/api/pods/", json={"name": "w-0"})
    requests.post(
        f"{fresh_server.url}/api/metrics/",
        data={
            "pod_name": "w-0",
            "name": "cpu",
            "value": "0.0",
            "date": "2026-01-01 00:00:00",
            "metadata": "",
            "cumulative": False,
        },
    )
    post(fresh_server, run["id"], "loss @ 0", 1, "2026-01-01 00:00:01", metadata="m")
    body = requests.get(f"{fresh_server.url}/api/metrics/").json()
    assert body == {
        "pod_metrics": {
            "w-0": {
                "cpu": [
                    {
                        "name": "cpu",
                        "value": "0.0",
                        "date": "2026-01-01T00:00:00.000000Z",
                        "metadata": "",
                        "cumulative": False,
                    }
                ]
            }
        },
        "run_metrics": {
            "full-run": {
                "loss @ 0": [
                    {
                        "name": "loss @ 0",
                        "value": "1",
                        "date": "2026-01-01T00:00:01.000000Z",
                        "metadata": "m",
                        "cumulative": False,
                    }
                ]
            },
            "empty-run": {},
        },
    }


def test_zip_download(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url, name="zip-run")
    created = run["created_at"]
    rid = run["id"]
    requests.post(f"{fresh_server.url}/api/pods/", json={"name": "zip-run-worker-0", "run_id": rid})
    post(fresh_server, rid, "early", 1, "2001-01-01 00:00:00")  # before the run was created: left out
    for i in range(5):
        post(fresh_server, rid, "val_global_loss @ 0", 5 - i, f"2099-01-01 00:00:0{i}.123999")
    post(fresh_server, rid, "TaskResult @ 0", "goal reached", "2099-01-01 00:00:09")
    requests.post(
        f"{fresh_server.url}/api/metrics/",
        data={
            "pod_name": "zip-run-worker-0",
            "name": "cpu",
            "value": "0.5",
            "date": "2099-01-01 00:00:00",
            "metadata": "",
            "cumulative": False,
        },
    )
    r = requests.get(
        f"{fresh_server.url}/api/metrics/{rid}/", params={"metric_type": "run", "format": "zip", "last_n": 2}
    )
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == "attachment; filename=metrics_zip-run.zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert zf.namelist() == ["result_val_global_loss @ 0.json", "official_result.txt", "zip-run-worker-0_cpu.json"]
    assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in zf.infolist())
    assert zf.read("official_result.txt") == b"goal reached"
    text = zf.read("result_val_global_loss @ 0.json").decode()
    assert json.loads(text) == [
        {"date": "2099-01-01T00:00:03.123Z", "value": "2", "cumulative": False},
        {"date": "2099-01-01T00:00:04.123Z", "value": "1", "cumulative": False},
    ]
    assert text.startswith('[\n    {\n        "date"')  # indent 4, like the dashboard
    assert json.loads(zf.read("zip-run-worker-0_cpu.json")) == [
        {"date": "2099-01-01T00:00:00Z", "value": "0.5", "cumulative": False}
    ]
    assert created  # the lower bound came from the run's creation time

    # Once finished, points after finished_at are left out.
    requests.patch(f"{fresh_server.url}/api/runs/{rid}/", json={"state": "finished"})
    r = requests.get(f"{fresh_server.url}/api/metrics/{rid}", params={"metric_type": "run", "format": "zip"})
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    assert "result_val_global_loss @ 0.json" not in zf.namelist()


def test_zip_for_a_pod_and_unknown_format(fresh_server: ServerHandle) -> None:
    requests.post(f"{fresh_server.url}/api/pods/", json={"name": "lonely pod"})
    r = requests.get(f"{fresh_server.url}/api/metrics/lonely pod", params={"format": "zip"})
    assert r.status_code == 200
    assert r.headers["content-disposition"] == "attachment; filename=metrics_lonely_pod.zip"
    assert zipfile.ZipFile(io.BytesIO(r.content)).namelist() == []
    r = requests.get(f"{fresh_server.url}/api/metrics/lonely pod", params={"format": "xml"})
    assert r.status_code == 404
