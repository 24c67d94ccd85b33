"""The read-back extension over a real socket: points with step, epoch, rank and metadata,
live reads by arrival, downsampling, exports, the series list, run configs, and the pages."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterator
from itertools import repeat
from pathlib import Path

import pytest
import requests

import mlbench_metrics
from mlbench_metrics import ApiClient, ConfigError, MetricsLogger, Run
from mlbench_metrics.cli import main as cli_main
from mlbench_metrics.points import EXPORT_COLUMNS
from mlbench_metrics.server import ServerHandle, serve

from helpers import METRIC_BODY_2, create_run, raw_exchange


def _points(server: ServerHandle, run_id: int, **params: object) -> dict[str, object]:
    response = requests.get(f"{server.url}/api/runs/{run_id}/points/", params=params)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    return dict(response.json())


def _series(answer: dict[str, object]) -> dict[str, dict[str, object]]:
    """name -> the series' columns, with the series' own fields (``count``, ...) beside them."""
    return {s["name"]: {**s, **s["points"]} for s in answer["series"]}  # type: ignore[attr-defined,index]


def _add(
    server: ServerHandle, run_id: int, name: str, dates: list[int], values: list[object], meta: object = ""
) -> None:
    n = len(dates)
    metadata = meta if isinstance(meta, list) else list(repeat(meta, n))
    server.store.add_batch(run_id, None, ([name] * n, dates, values, metadata, [False] * n), n, 0)


def test_logged_points_come_back_with_step_epoch_rank_and_metadata(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    with ApiClient(url=server.address) as client:
        for rank in (0, 1):
            with MetricsLogger(run_id, client=client, rank=rank) as log:
                log.log("loss", 1.5, step=10)
                log.epoch_end()
                log.log("loss", 0.5 + rank, step=20, lr=0.1)
    got = _series(_points(server, run_id))
    assert sorted(got) == ["loss @ 0", "loss @ 1"]
    one = got["loss @ 1"]
    assert one["metric"] == "loss" and one["count"] == 2 and one["downsampled"] is False
    assert one["step"] == [10, 20] and one["epoch"] == [0, 1] and one["rank"] == [1, 1]
    assert one["value"] == [1.5, 1.5] and one["cumulative"] == [False, False]
    assert json.loads(one["metadata"][1]) == {"rank": 1, "epoch": 1, "step": 20, "lr": 0.1}  # type: ignore[index]

    detailed = Run({"id": run_id}, url=server.address).metrics(detail=True)
    p = detailed["loss @ 0"][1]
    assert (p.step, p.epoch, p.rank, p.value, p.cumulative) == (20, 1, 0, 0.5, False)
    assert Run({"id": run_id}, url=server.address).metrics()["loss @ 0"][1][1] == 0.5  # today's default unchanged


def test_upstream_metadata_and_rank_from_the_name(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    body = METRIC_BODY_2.format(run_id=run_id)  # "acc @ 0", metadata "{rank: 0, epoch:1.5}", cumulative
    assert (
        requests.post(
            f"{server.url}/api/metrics/", data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
        ).status_code
        == 201
    )
    _add(server, run_id, "grad @ 3", [5], [1.0], "not json at all")
    got = _series(_points(server, run_id))
    acc, grad = got["acc @ 0"], got["grad @ 3"]
    assert (acc["step"], acc["epoch"], acc["rank"], acc["cumulative"]) == ([None], [1.5], [0], [True])
    assert (grad["step"], grad["epoch"], grad["rank"], grad["metric"]) == ([None], [None], [3], "grad")


def test_after_cursor_returns_what_arrived_since_even_with_older_dates(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    _add(server, run_id, "loss @ 0", [100, 200], [1, 2])
    first = _points(server, run_id)
    cursor = first["cursor"]
    assert _points(server, run_id, after=cursor)["series"] == []
    _add(server, run_id, "loss @ 1", [50], [9])  # a late rank: dated before everything seen
    _add(server, run_id, "loss @ 0", [300], [3])
    later = _points(server, run_id, after=cursor)
    got = _series(later)
    assert got["loss @ 0"]["date_us"] == [300] and got["loss @ 1"]["date_us"] == [50]
    assert later["cursor"] > cursor  # type: ignore[operator]
    assert _points(server, run_id, after=later["cursor"])["series"] == []
    # through=CURSOR: only what had arrived by then, so a first read and the polls after its
    # cursor never overlap (a page need not drop points it thinks it has seen).
    upto = _series(_points(server, run_id, through=cursor))
    assert upto["loss @ 0"]["date_us"] == [100, 200] and "loss @ 1" not in upto
    assert _series(_points(server, run_id, after=cursor, through=later["cursor"])) == got


def test_since_until_names_metrics_and_fields_filter(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    for name in ("loss @ 0", "loss @ 1", "lossy", "acc @ 0"):
        _add(server, run_id, name, [1_000_000, 2_000_000, 3_000_000], ["1", "2", "3"])
    answer = _points(
        server,
        run_id,
        metric="loss",
        since="1970-01-01T00:00:02Z",
        until="1970-01-01T00:00:02Z",
        fields="date_us,value",
    )
    got = _series(answer)
    assert sorted(got) == ["loss @ 0", "loss @ 1"]
    assert got["loss @ 0"]["date_us"] == [2_000_000] and got["loss @ 0"]["value"] == ["2"]
    assert "step" not in got["loss @ 0"] and "metadata" not in got["loss @ 0"]
    assert sorted(_series(_points(server, run_id, name=["lossy", "acc @ 0"]))) == ["acc @ 0", "lossy"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"fields": "date_us,bogus"}, 400),
        ({"format": "xml"}, 400),
        ({"since": "yesterday"}, 400),
        ({"max_points": "-1"}, 400),
    ],
)
def test_bad_points_parameters_are_400(server: ServerHandle, params: dict[str, str], status: int) -> None:
    run_id = create_run(server.url)["id"]
    response = requests.get(f"{server.url}/api/runs/{run_id}/points/", params=params)
    assert response.status_code == status and "message" in response.json()


@pytest.mark.parametrize("path", ["runs/999999/points/", "runs/abc/series/", "runs/99999999999999999999999/config/"])
def test_unknown_runs_are_404(server: ServerHandle, path: str) -> None:
    assert requests.get(f"{server.url}/api/{path}").status_code == 404


def test_downsampling_keeps_each_buckets_min_and_max(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    n = 20_000
    dates = list(range(0, n * 10, 10))
    values: list[object] = [math.sin(i / 50) for i in range(n)]
    values[12_345] = 99.0  # a spike must survive
    values[777] = -99.0
    values[5000] = "nan"  # text that is not a number never wins a bucket
    _add(server, run_id, "loss @ 0", dates, values)
    got = _series(_points(server, run_id, max_points=202))["loss @ 0"]
    assert got["downsampled"] is True and got["count"] == n
    kept = got["date_us"]
    assert len(kept) <= 202 and kept == sorted(kept)  # type: ignore[arg-type]
    assert kept[0] == 0 and kept[-1] == dates[-1]  # type: ignore[index]
    assert 99.0 in got["value"] and -99.0 in got["value"]  # type: ignore[operator]
    assert got["step"] == [None] * len(kept)  # type: ignore[arg-type]
    # Every bucket's true min and max are among the kept points.
    buckets = 100
    span = dates[-1] - dates[0]
    for b in range(buckets):
        lo, hi = span * b // buckets, span * (b + 1) // buckets
        last = b == buckets - 1  # the last bucket holds the last point too
        inside = [
            (v, d) for d, v in zip(dates, values) if (lo <= d < hi or (last and d == hi)) and isinstance(v, float)
        ]
        if inside:
            assert min(inside)[1] in kept and max(inside)[1] in kept


def test_text_values_come_back_when_their_series_is_downsampled(server: ServerHandle) -> None:
    # Was: text in a series past max_points never won a bucket, so the run page lost its notes.
    run_id = create_run(server.url)["id"]
    n = 1000
    values: list[object] = [float(i % 7) for i in range(n)]
    values[400] = "lr dropped to 0.01"
    _add(server, run_id, "loss", list(range(n)), values)
    _add(server, run_id, "note", list(range(n)), [f"note {i}" for i in range(n)])
    got = _series(_points(server, run_id, max_points=50))
    assert "lr dropped to 0.01" in got["loss"]["value"]  # type: ignore[operator]
    assert len(got["loss"]["value"]) <= 50 + 1  # type: ignore[arg-type]
    notes = got["note"]["value"]
    assert notes[-50:] == [f"note {i}" for i in range(n - 50, n)] and len(notes) <= 52  # type: ignore[index,arg-type]


def test_a_metadata_nested_past_the_parsers_depth_does_not_break_the_runs_reads(server: ServerHandle) -> None:
    # The metadata is free text, stored as sent; reading step, epoch and rank from it
    # must not make every later read of the run a 500 (the run page would never load).
    run = create_run(server.url)
    deep = '{"step": 3, "x": ' + "[" * 5000 + "]" * 5000 + "}"
    body = {"run_id": run["id"], "name": "loss", "value": 1, "date": "2021-01-02 03:04:05", "metadata": deep}
    assert requests.post(f"{server.url}/api/metrics/", data=dict(body, cumulative="False")).status_code == 201
    for route in ("points/", "points/?format=csv", "series/"):
        r = requests.get(f"{server.url}/api/runs/{run['id']}/{route}")
        assert r.status_code == 200, (route, r.text)
    series = requests.get(f"{server.url}/api/runs/{run['id']}/points/").json()["series"]
    assert series[0]["points"]["metadata"] == [deep] and series[0]["points"]["step"] == [None]


def test_series_catalog_and_stats(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    with ApiClient(url=server.address) as client, MetricsLogger(run_id, client=client, rank=0) as log:
        log.increment("samples", 32)  # before any step: it has none (after one, it carries it)
        log.log("loss", 1.0, step=1)
    answer = requests.get(f"{server.url}/api/runs/{run_id}/series/").json()
    got = {s["name"]: s for s in answer["series"]}
    assert got["loss @ 0"]["has_step"] is True and got["loss @ 0"]["cumulative"] is False
    assert got["samples @ 0"]["cumulative"] is True and got["samples @ 0"]["has_step"] is False
    assert got["loss @ 0"]["metric"] == "loss" and got["loss @ 0"]["rank"] == 0 and got["loss @ 0"]["count"] == 1
    assert answer["cursor"] == _points(server, run_id)["cursor"]
    stats = requests.get(f"{server.url}/api/runs/stats/").json()["runs"][str(run_id)]
    assert (stats["series"], stats["points"]) == (2, 2)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_exports_have_one_row_per_point_with_the_issue_columns(server: ServerHandle, fmt: str) -> None:
    run_id = create_run(server.url, name="export-run")["id"]
    with ApiClient(url=server.address) as client, MetricsLogger(run_id, client=client, rank=1) as log:
        log.log("loss", 0.25, step=7)
    _add(server, run_id, "weird,name @ 0", [1], ['x"y'], '{"note": "a,b"}')
    response = requests.get(f"{server.url}/api/runs/{run_id}/points/", params={"format": fmt})
    assert response.status_code == 200
    assert f"metrics_export-run.{fmt}" in response.headers["content-disposition"]
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert tuple(rows[0]) == EXPORT_COLUMNS
    else:
        rows = response.json()
    by_name = {r["name"]: r for r in rows}
    loss = by_name["loss @ 1"]
    assert str(loss["step"]) == "7" and str(loss["rank"]) == "1" and str(loss["epoch"]) == "0"
    assert str(loss["value"]) == "0.25" and loss["date"].startswith("20")
    weird = by_name["weird,name @ 0"]
    assert weird["value"] == 'x"y' and weird["metadata"] == '{"note": "a,b"}' and str(weird["rank"]) == "0"


def test_large_answers_are_gzipped_for_clients_that_accept_it(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    _add(server, run_id, "loss @ 0", list(range(5000)), [0.5] * 5000)
    url = f"{server.url}/api/runs/{run_id}/points/"
    zipped = requests.get(url, headers={"Accept-Encoding": "gzip"}, stream=True)
    assert zipped.headers["Content-Encoding"] == "gzip"
    raw = requests.get(url, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in raw.headers
    assert len(zipped.raw.read()) < len(raw.content) / 5


def test_run_config_round_trip_details_and_limits(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    url = f"{server.url}/api/runs/{run_id}/config/"
    assert requests.get(url).json() == {"config": {}}
    config = {"lr": 0.1, "optimizer": {"name": "sgd", "momentum": 0.9}, "tags": ["a", "<b>"]}
    assert requests.put(url, json={"config": config}).json() == {"config": config}
    assert requests.get(url).json() == {"config": config}
    details = requests.get(f"{server.url}/api/runs/{run_id}/details/").json()
    assert details["config"] == config and details["image"] == "me/img:1" and details["backend"] == "gloo"
    assert Run({"id": run_id}, url=server.address).config() == config
    assert requests.put(url, data="config=1").status_code == 415
    assert requests.put(url, json={"config": [1]}).status_code == 400
    assert requests.put(url, json={"config": {"x": "y" * 70_000}}).status_code == 413
    assert requests.get(url).json() == {"config": config}  # refused bodies change nothing
    requests.delete(f"{server.url}/api/runs/{run_id}/")
    assert requests.get(url).status_code == 404


def test_logger_stores_its_config_once_the_run_is_known(server: ServerHandle) -> None:
    with MetricsLogger(url=server.address, new_run="with-config", config={"lr": 0.01, "layers": [64, 64]}) as log:
        log.log("loss", 1.0)
        run_id = log.run_id
    assert Run({"id": run_id}, url=server.address).config() == {"lr": 0.01, "layers": [64, 64]}


def _nested(depth: int) -> dict[str, object]:
    config: dict[str, object] = {}
    for _ in range(depth):
        config = {"a": config}
    return config


@pytest.mark.parametrize(
    "config", [["lr", 0.1], {"lr": float("nan")}, {"model": object()}, {"x": "y" * 70_000}, _nested(5000)]
)
def test_a_bad_config_is_refused_in_the_training_script(server: ServerHandle, config: object) -> None:
    run_id = create_run(server.url)["id"]
    with pytest.raises(ConfigError, match="config"):
        MetricsLogger(run_id, url=server.address, config=config)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "where"),
    [
        ({"lr": 0.1, "data_dir": os.fsdecode(b"/data/caf\xe9")}, "config['data_dir']"),
        ({os.fsdecode(b"k\xfe"): 1}, "config['k\\udcfe']"),
        ({"opt": {"tags": ["a", "b\udcff"]}}, "config['opt']['tags'][1]"),
    ],
)
def test_a_config_with_a_lone_surrogate_is_refused_in_the_script_naming_where(
    server: ServerHandle, config: dict[str, object], where: str
) -> None:
    """Before: it passed the check (json.dumps escapes it), the logger ran, and the server
    refused the whole configuration later, with one warning nobody reads."""
    run_id = create_run(server.url)["id"]
    with pytest.raises(ConfigError, match="lone surrogate") as info:
        MetricsLogger(run_id, url=server.address, config=config)
    assert where in str(info.value)
    with pytest.raises(ConfigError, match="lone surrogate"):
        mlbench_metrics.init(run_id, url=server.address, config=config)
    assert Run({"id": run_id}, url=server.address).config() == {}


@pytest.fixture
def dashboard_like() -> Iterator[ServerHandle]:
    handle = serve(extensions=False)
    try:
        yield handle
    finally:
        handle.stop()


def test_against_a_server_without_the_extensions_config_warns_and_detail_degrades(
    dashboard_like: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = create_run(dashboard_like.url)["id"]
    assert requests.get(f"{dashboard_like.url}/api/runs/{run_id}/points/").status_code == 404
    assert requests.get(f"{dashboard_like.url}/").status_code == 404
    with caplog.at_level(logging.WARNING, logger="mlbench_metrics.logger.run_config"):
        with ApiClient(url=dashboard_like.address) as client:
            with MetricsLogger(run_id, client=client, rank=2, config={"lr": 0.1}) as log:
                log.log("loss", 1.0, step=3)
    assert "keeps no run configuration" in caplog.text
    (point,) = Run({"id": run_id}, url=dashboard_like.address).metrics(detail=True)["loss @ 2"]
    assert (point.step, point.epoch, point.rank, point.value) == (None, None, 2, 1.0)


def test_pages_need_no_token_and_the_api_still_does() -> None:
    with serve(token="s3cret") as handle:
        page = requests.get(f"{handle.url}/")
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert b"s3cret" not in page.content
        script = requests.get(f"{handle.url}/static/js/app.js")
        assert script.status_code == 200 and script.headers["Content-Type"].startswith("text/javascript")
        assert requests.get(f"{handle.url}/static/vendor/uPlot.iife.min.js").content.startswith(
            b"/*! https://github.com/leeoniya/uPlot (v1.6.32)"
        )
        for path in ("/static/../store.py", "/static/%2e%2e/store.py", "/static/nope.js", "/static/js/"):
            assert requests.get(handle.url + path).status_code in (401, 404), path
        assert requests.get(f"{handle.url}/api/runs/").status_code == 401
        assert requests.get(f"{handle.url}/api/runs/stats/").status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert requests.get(f"{handle.url}/api/runs/stats/", headers=auth).status_code == 200


def test_api_root_lists_the_extensions(server: ServerHandle) -> None:
    extensions = requests.get(f"{server.url}/api/").json()["server"]["extensions"]
    assert {"points", "run_config"} <= set(extensions)
    with ApiClient(url=server.address) as client:
        assert {"points", "run_config"} <= client.server_extensions()


def test_an_export_streams_every_point_in_order_whatever_order_the_chunks_came_in(server: ServerHandle) -> None:
    """A download without max_points is streamed (chunked), in pieces of about 50,000 points:
    series after series, each in (date, arrival) order even where batches overlap."""
    run_id = create_run(server.url)["id"]
    _add(server, run_id, "b", list(range(0, 120_000, 2)), list(range(0, 120_000, 2)))
    _add(server, run_id, "b", list(range(1, 120_000, 2)), list(range(1, 120_000, 2)))  # overlaps it all
    for start in range(0, 130_000, 10_000):  # in order, batch after batch
        _add(server, run_id, "a", list(range(start, start + 10_000)), [-0.5] * 10_000)
    _add(server, run_id, "c", [5, 5, 5], ["x", "y", "z"])  # one date, arrival order kept
    for headers in ({"Accept-Encoding": "identity"}, {"Accept-Encoding": "gzip"}):
        response = requests.get(f"{server.url}/api/runs/{run_id}/points/?format=csv", headers=headers, timeout=60)
        assert response.status_code == 200 and response.headers["Transfer-Encoding"] == "chunked"
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [r["name"] for r in rows] == ["a"] * 130_000 + ["b"] * 120_000 + ["c"] * 3
        assert [r["value"] for r in rows[:2]] == ["-0.5", "-0.5"]  # a negative number stays a number
        assert [int(r["value"]) for r in rows[130_000:250_000]] == list(range(120_000))
        assert [r["value"] for r in rows[-3:]] == ["x", "y", "z"]
    answer = requests.get(f"{server.url}/api/runs/{run_id}/points/?format=json&metric=c", timeout=60)
    assert [p["value"] for p in answer.json()] == ["x", "y", "z"]
    since = requests.get(
        f"{server.url}/api/runs/{run_id}/points/?format=json&metric=b&since=1970-01-01T00:00:00.1", timeout=60
    )
    assert [p["value"] for p in since.json()] == list(range(100_000, 120_000))


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_neutralised(server: ServerHandle, tmp_path: Path) -> None:
    """OWASP: a cell starting with = + - @ gets a leading quote, in the server's CSV and the
    CLI's (one writer); numbers, negative ones included, stay numbers."""
    run_id = create_run(server.url)["id"]
    _add(server, run_id, '=HYPERLINK("http://evil")', [1, 2], ["@SUM(A1)", "-0.5"], "+cmd|' /C calc'!A0")
    _add(server, run_id, "loss", [1, 2, 3], [-0.5, "-2+3", "-inf"], "-1")
    expected = {
        ('\'=HYPERLINK("http://evil")', "'@SUM(A1)", "'+cmd|' /C calc'!A0"),
        ('\'=HYPERLINK("http://evil")', "-0.5", "'+cmd|' /C calc'!A0"),
        ("loss", "-0.5", "-1"),
        ("loss", "'-2+3", "-1"),
        ("loss", "-inf", "-1"),
    }
    answer = requests.get(f"{server.url}/api/runs/{run_id}/points/?format=csv", timeout=30)
    assert {(r["name"], r["value"], r["metadata"]) for r in csv.DictReader(io.StringIO(answer.text))} == expected
    out = tmp_path / "out.csv"
    assert (
        cli_main(["metrics", "download", str(run_id), "--format", "csv", "-o", str(out), "--url", server.address]) == 0
    )
    with open(out, newline="", encoding="utf-8") as f:
        assert {(r["name"], r["value"], r["metadata"]) for r in csv.DictReader(f)} == expected


def test_an_http10_client_gets_a_streamed_export_without_chunks(server: ServerHandle) -> None:
    """HTTP/1.0 has no chunked encoding: the body ends with the connection instead."""
    run_id = create_run(server.url)["id"]
    _add(server, run_id, "loss", [1, 2], [0.5, 0.25])
    request = f"GET /api/runs/{run_id}/points/?format=csv HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    answer = raw_exchange("127.0.0.1", server.port, request.encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding" not in head and b"Connection: close" in head
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [r["value"] for r in rows] == ["0.5", "0.25"]
