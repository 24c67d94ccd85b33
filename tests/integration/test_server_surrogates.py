"""Text that is not valid Unicode (a lone surrogate) never breaks a read (issue 20, item 1).

What such text becomes: refused where it enters, with a clear error (``log()``, the
client's validator, the server's bodies: 400), never stored. What an older server stored
anyway is read back escaped (``\\udcff`` in JSON, CSV and zip names), never a 500.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import zipfile
from pathlib import Path

import pytest
import requests

from mlbench_metrics import MetricsLogger
from mlbench_metrics.cli import main as cli_main
from mlbench_metrics.records import check_name, check_value
from mlbench_metrics.server import serve
from mlbench_metrics.server.chunks import encode_point
from mlbench_metrics.server.store import Store

from helpers import create_run

FILE_NAME = os.fsdecode(b"ckpt-\xff.pt")  # "ckpt-\udcff.pt": a file name that is not UTF-8
JSON = {"Content-Type": "application/json"}


def test_the_validator_refuses_a_lone_surrogate_with_a_clear_error() -> None:
    for check in (check_value, check_name):
        with pytest.raises(ValueError, match=r"lone surrogate \(U\+DCFF at character 5\)"):
            check(FILE_NAME)
    assert check_value("ckpt-\N{GREEK SMALL LETTER ALPHA}.pt") == "ckpt-\N{GREEK SMALL LETTER ALPHA}.pt"
    assert check_value("\N{GRINNING FACE}") == "\N{GRINNING FACE}"  # a pair is a character


def test_log_refuses_a_lone_surrogate_and_keeps_what_was_logged() -> None:
    with serve() as server:
        run_id = create_run(server.url)["id"]
        with MetricsLogger(url=server.address, run_id=run_id) as log:
            log.log("loss", 0.5)
            with pytest.raises(ValueError, match="lone surrogate"):
                log.log("checkpoint", FILE_NAME)
            with pytest.raises(ValueError, match="lone surrogate"):
                log.log(FILE_NAME, 1.0)
            log.flush(30)
        assert server.store.count_metrics(run_id) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/api/metrics/",
            '{"run_id": %d, "name": "x", "value": "\\udfff", "date": "2021-01-02 03:04:05", '
            '"metadata": "", "cumulative": false}',
        ),
        (
            "/api/metrics/",
            '{"run_id": %d, "name": "x", "value": "1", "date": "2021-01-02 03:04:05", '
            '"metadata": "{\\"f\\": \\"\\udcff\\"}", "cumulative": false}',
        ),
        (
            "/api/metrics/batch/",
            '{"run_id": %d, "metrics": [{"name": "\\ud800x", "value": 1, '
            '"date": "2021-01-02 03:04:05", "metadata": "", "cumulative": false}]}',
        ),
    ],
)
def test_the_server_refuses_a_lone_surrogate_with_400_and_keeps_answering(path: str, body: str) -> None:
    """Before: stored, and from then on every read that included it answered 500."""
    with serve() as server:
        run_id = create_run(server.url)["id"]
        r = requests.post(server.url + path, data=(body % run_id).encode(), headers=JSON, timeout=10)
        assert r.status_code == 400 and "lone surrogate" in r.json()["message"], r.text
        assert server.store.count_metrics(run_id) == 0
        assert requests.get(f"{server.url}/api/metrics/", timeout=10).status_code == 200
        pair = json.dumps(  # a surrogate pair, escaped: one character, stored
            {"run_id": run_id, "name": "x", "value": "\N{GRINNING FACE}", "date": "2021-01-02 03:04:05"}
            | {"metadata": "", "cumulative": False}
        )
        assert "\\ud83d\\ude00" in pair
        assert requests.post(f"{server.url}/api/metrics/", data=pair, headers=JSON, timeout=10).status_code == 201


def _store_surrogates(db: Path) -> int:
    """What a server before the fix stored, written with sqlite3: lone surrogates in values and
    metadata, in a chunk of today's binary format and in an older database's JSON text."""
    store = Store(str(db))
    try:
        run_id = int(store.create_run(1_600_000_000_000_000, name="old", num_workers=1)["id"])
        pod_id = int(store.upsert_pod("pod-1", "{}", "Running", "", run_id)["id"])
    finally:
        store.close()
    date = 1_600_000_000_000_000
    rows = [
        (run_id, "loss", date, 1, encode_point(date, "0.5", "", False)),
        (run_id, "ckpt", date + 1, 2, encode_point(date + 1, FILE_NAME, '{"step": 1, "f": "\udcff"}', False)),
        (run_id, "TaskResult @ 0", date + 2, 3, encode_point(date + 2, "\udfff", "", False)),
        (run_id, "old text", date + 3, 4, json.dumps({"d": [date + 3], "v": ["x\udfff"], "m": "\udcff", "c": False})),
        (-pod_id, "cpu", date, 5, encode_point(date, "\udcff", "", False)),
    ]
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO chunks (owner, name, first_date, id, last_date, count, data) VALUES (?, ?, ?, ?, ?, 1, ?)",
            [(owner, name, d, chunk_id, d, data) for owner, name, d, chunk_id, data in rows],
        )
    conn.close()
    return run_id


def test_nothing_already_stored_can_make_a_read_fail(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    run_id = _store_surrogates(db)
    with serve(db_path=str(db)) as server:
        base = f"{server.url}/api"
        answers = {
            path: requests.get(base + path, timeout=30)
            for path in (
                "/runs/",
                f"/runs/{run_id}/",
                "/runs/stats/",
                f"/runs/{run_id}/series/",
                f"/runs/{run_id}/points/",
                f"/runs/{run_id}/points/?max_points=10",
                f"/runs/{run_id}/points/?format=json",
                f"/runs/{run_id}/points/?format=csv",
                f"/runs/{run_id}/points/?format=csv&max_points=10",
                "/metrics/",
                f"/metrics/{run_id}/?metric_type=run",
                f"/metrics/{run_id}/?metric_type=run&format=zip",
                "/metrics/pod-1/",
                "/pods/",
            )
        }
        for path, r in answers.items():
            assert r.status_code in (200, 404), (path, r.status_code, r.text[:200])
        everything = answers["/metrics/"].json()
        assert everything["run_metrics"]["old"]["ckpt"][0]["value"] == FILE_NAME
        assert everything["run_metrics"]["old"]["old text"][0]["metadata"] == "\udcff"
        assert everything["pod_metrics"]["pod-1"]["cpu"][0]["value"] == "\udcff"
        rows = list(csv.DictReader(io.StringIO(answers[f"/runs/{run_id}/points/?format=csv"].text)))
        assert [row["value"] for row in rows if row["name"] == "ckpt"] == ["ckpt-\\udcff.pt"]
        assert [row["value"] for row in rows if row["name"] == "old text"] == ["x\\udfff"]
        points = json.loads(answers[f"/runs/{run_id}/points/?format=json"].content)
        assert {p["value"] for p in points} >= {FILE_NAME, 0.5}
        with zipfile.ZipFile(io.BytesIO(answers[f"/metrics/{run_id}/?metric_type=run&format=zip"].content)) as zf:
            assert json.loads(zf.read("result_ckpt.json"))[0]["value"] == FILE_NAME
            assert zf.read("official_result.txt") == b"\\udfff"

        out = tmp_path / "points.csv"
        code = cli_main(
            ["metrics", "download", str(run_id), "--format", "csv", "-o", str(out), "--url", server.address]
        )
        assert code == 0 and "ckpt-\\udcff.pt" in out.read_text(encoding="utf-8")
