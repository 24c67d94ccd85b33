"""The one wire codec and validator, end to end: what the client encodes the server
decodes, text flags mean what they say, and no batch expands beyond a bound."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest
import requests

from mlbench_metrics import ApiClient, Metric
from mlbench_metrics.server import ServerHandle

from helpers import create_run


def points(server: ServerHandle, run_id: int) -> dict[str, list[dict[str, Any]]]:
    return dict(requests.get(f"{server.url}/api/metrics/{run_id}/", params={"metric_type": "run"}).json())


@pytest.mark.parametrize(
    ("flag", "stored"), [("False", False), ("false", False), ("0", False), ("True", True), ("1", True)]
)
def test_cumulative_given_as_text_is_parsed(fresh_server: ServerHandle, flag: str, stored: bool) -> None:
    # Was: bool("False") is True, so the text "False" stored a cumulative metric.
    run = create_run(fresh_server.url)
    with ApiClient(url=fresh_server.address) as client:
        assert client.post_metric(run["id"], "single", 1, cumulative=flag).result().status_code == 201  # type: ignore[arg-type]
        result = client.post_metrics(run["id"], [Metric("batched", 1, cumulative=flag)]).result()  # type: ignore[arg-type]
        assert result.ok
    body = points(fresh_server, run["id"])
    assert body["single"][0]["cumulative"] is stored and body["batched"][0]["cumulative"] is stored


def test_a_flag_that_is_not_a_boolean_is_refused(fresh_server: ServerHandle) -> None:
    with ApiClient(url=fresh_server.address, strict=True) as client, pytest.raises(ValueError, match="cumulative"):
        client.post_metric(1, "x", 1, cumulative="maybe")  # type: ignore[arg-type]


def packed(templates: list[str], count: int) -> dict[str, Any]:
    return {
        "count": count,
        "name": ["x"],
        "value_f64": base64.b64encode(struct.pack(f"<{count}d", *([0.5] * count))).decode(),
        "date_us": base64.b64encode(struct.pack(f"<{count}q", *range(count))).decode(),
        "metadata": {
            "templates": templates,
            "stepped": [True],
            "steps": base64.b64encode(struct.pack(f"<{count}q", *range(count))).decode(),
        },
        "cumulative": False,
    }


@pytest.mark.parametrize(
    ("templates", "count", "status"),
    [
        (['{"step": %0100000d}'], 200, 400),  # a width: each record would become 100 KB
        (['{"step": %.90000f}'], 200, 400),
        (['{"step": %s}'], 10, 400),
        (['{"pad": "' + "p" * 2000 + '", "step": %d}'], 100_000, 413),  # 200 MB expanded
    ],
    ids=["width", "precision", "not-d", "too-long-expanded"],
)
def test_packed_metadata_cannot_expand_past_a_bound(
    fresh_server: ServerHandle, templates: list[str], count: int, status: int
) -> None:
    # Was: a 6.5 KB packed batch with "%0100000d" stored 20 MB.
    run = create_run(fresh_server.url)
    body = {"run_id": run["id"], "batch_id": "b", "packed": packed(templates, count)}
    r = requests.post(f"{fresh_server.url}/api/metrics/batch/", json=body)
    assert r.status_code == status, r.text[:300]
    assert "metadata" in r.json()["message"]
    assert fresh_server.store.count_metrics(run["id"]) == 0


def test_stepped_metadata_round_trips(fresh_server: ServerHandle) -> None:
    run = create_run(fresh_server.url)
    body = {"run_id": run["id"], "batch_id": "ok", "packed": packed(['{"epoch": 1, "step": %d, "pct": "5%%"}'], 3)}
    assert requests.post(f"{fresh_server.url}/api/metrics/batch/", json=body).status_code in (200, 201)
    rows = requests.get(f"{fresh_server.url}/api/metrics/").json()["run_metrics"][run["name"]]["x"]
    assert [r["metadata"] for r in rows] == [f'{{"epoch": 1, "step": {i}, "pct": "5%"}}' for i in range(3)]
