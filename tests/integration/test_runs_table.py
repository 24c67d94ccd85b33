"""The runs table's read (``GET /api/runs/table/``): configs and per-metric last/min/max from kept summaries."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import requests

from mlbench_metrics import ApiClient, MetricsLogger
from mlbench_metrics.server import ServerHandle, serve

from helpers import create_run

DATA = Path(__file__).parent.parent / "data"


def _table(server: ServerHandle, *metrics: str, **params: str) -> dict[str, Any]:
    r = requests.get(f"{server.url}/api/runs/table/", params={"metric": list(metrics), **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _row(answer: dict[str, Any], run_id: int) -> dict[str, Any]:
    return next(r for r in answer["runs"] if r["id"] == run_id)


def test_ranked_metrics_config_and_text_values_are_summarised(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    with ApiClient(url=server.address) as client:
        for rank in (0, 1):
            config = {"optimizer": {"lr": 0.1, "name": "sgd"}, "layers": 4} if rank == 0 else None
            with MetricsLogger(run_id, client=client, rank=rank, config=config) as log:
                for step, loss in enumerate([3.0, 1.0, 2.0]):
                    log.log("train_loss", loss + 10 * rank, step=step)
                log.log("note", "warming up", step=3)
    answer = _table(server, "train_loss", "note")
    row = _row(answer, run_id)
    assert {"train_loss", "note"} <= set(answer["metrics"]) and answer["ranks"] == "0"
    assert row["config"] == {"optimizer": {"lr": 0.1, "name": "sgd"}, "layers": 4}
    assert row["series"] == 4 and row["state"] and row["name"] and "created_at" in row
    assert row["metrics"]["train_loss"] == {"last": 2.0, "min": 1.0, "max": 3.0, "count": 6, "ranks": 2}
    assert row["metrics"]["note"]["last"] == "warming up" and row["metrics"]["note"]["min"] is None
    mean = _row(_table(server, "train_loss", ranks="mean"), run_id)["metrics"]["train_loss"]
    assert mean == {"last": 7.0, "min": 6.0, "max": 8.0, "count": 6, "ranks": 2}


def test_last_is_by_date_and_nan_is_left_out_of_min_and_max(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    store = server.store
    store.add_batch(run_id, None, (["acc"] * 3, [30, 10, 20], [0.3, 0.1, float("nan")], [""] * 3, [False] * 3), 3, 0)
    store.add_batch(run_id, None, (["acc"], [25], [0.9], [""], [False]), 1, 0)  # late, but not the newest date
    form = {"run_id": run_id, "name": "acc", "value": "-inf", "date": "1970-01-01 00:00:00.000005"}
    requests.post(f"{server.url}/api/metrics/", data=dict(form, metadata="", cumulative="False"))
    row = _row(_table(server, "acc"), run_id)
    assert row["metrics"]["acc"] == {"last": 0.3, "min": "-inf", "max": 0.9, "count": 5, "ranks": 1}


def test_a_last_value_no_text_column_holds_is_kept_with_a_replacement_character(tmp_path: Path) -> None:
    # A lone surrogate (which older servers accepted; the chunk keeps it in its bytes) fits
    # no TEXT column: storing the series' summary failed the whole batch. (Its own server:
    # such a value in the shared one would show up in other tests' reads.)
    with serve(db_path=str(tmp_path / "m.db")) as server:
        run_id = create_run(server.url)["id"]
        server.store.add_batch(run_id, None, (["odd"], [1], ["a\ud800b"], [""], [False]), 1, 0)
        assert _row(_table(server, "odd"), run_id)["metrics"]["odd"]["last"] == "a\ufffdb"


def test_deleting_a_run_forgets_its_summaries_and_bad_parameters_are_said(server: ServerHandle) -> None:
    run_id = create_run(server.url)["id"]
    server.store.add_batch(run_id, None, (["gone_metric"], [1], [1.0], [""], [False]), 1, 0)
    assert "gone_metric" in _table(server)["metrics"]
    assert requests.delete(f"{server.url}/api/runs/{run_id}/").status_code == 204
    assert "gone_metric" not in _table(server)["metrics"]
    bad = requests.get(f"{server.url}/api/runs/table/", params={"ranks": "max"})
    assert bad.status_code == 400 and "ranks" in bad.json()["message"]
    many = requests.get(f"{server.url}/api/runs/table/", params={"metric": [f"m{i}" for i in range(51)]})
    assert many.status_code == 400


def test_a_database_written_before_the_summaries_gets_them_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(DATA / "chunks_v1.db", path)
    with serve(db_path=str(path)) as server:
        answer = requests.get(f"{server.url}/api/runs/table/").json()
        assert answer["metrics"], "the old database's series have no summaries"
        for run in answer["runs"]:
            metrics = sorted({s["metric"] for s in _points(server, run["id"])})
            row = _row(_table(server, *metrics), run["id"])
            for series in _points(server, run["id"]):
                figures = row["metrics"][series["metric"]]
                numbers = [v for v in map(_number, series["points"]["value"]) if v == v]
                if series["rank"] in (0, None) and numbers and figures["ranks"] == 1:
                    assert (figures["min"], figures["max"]) == (min(numbers), max(numbers)), series["name"]


def test_series_counted_before_values_were_kept_get_them_when_opened(tmp_path: Path) -> None:
    # A database whose series_stats has counts but no value columns (written between the two).
    path = tmp_path / "m.db"
    with serve(db_path=str(path)) as server:
        run_id = create_run(server.url)["id"]
        server.store.add_batch(run_id, None, (["acc"] * 3, [1, 2, 3], [0.5, 0.9, 0.7], [""] * 3, [False] * 3), 3, 0)
    with sqlite3.connect(path) as conn:
        for column in ("last_value", "min_value", "max_value"):
            conn.execute(f"ALTER TABLE series_stats DROP COLUMN {column}")
        conn.execute("UPDATE schema_version SET version = 3")  # the schema's version before them
    with serve(db_path=str(path)) as server:
        figures = _row(_table(server, "acc"), run_id)["metrics"]["acc"]
        assert figures == {"last": 0.7, "min": 0.5, "max": 0.9, "count": 3, "ranks": 1}


def _points(server: ServerHandle, run_id: int) -> list[dict[str, Any]]:
    r = requests.get(f"{server.url}/api/runs/{run_id}/points/", params={"fields": "value"})
    return list(r.json()["series"])


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
