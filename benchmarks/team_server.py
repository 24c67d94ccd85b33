"""The team server: batch ingest, a 1,000,000-point chart and the runs table, SQLite beside PostgreSQL.

Measured in one run, side by side, each server in its own processes:

* batch ingest (``POST /api/metrics/batch/``, batches of 1,000 metrics over 10 names, the
  columnar form, bodies encoded before the clock starts) in metrics/s, with 8 and with 64
  concurrent writers (threads spread over 2 client processes, one connection each) into
  one run (a multi-node job's ranks), and 64 writers into 8 runs (a team), for SQLite with
  1 process and PostgreSQL with 1, 2 and 4 processes (``serve --workers N``);
* the first chart of a 1,000,000-point series (``GET /api/runs/{id}/points/?metric=loss
  &max_points=1000``, what the web UI asks; the answer time of a server that never read
  that run, then warm), on each database;
* the runs table with 1,000 runs (``GET /api/runs/`` and ``GET /api/runs/stats/``, what
  the runs page asks every 2 s), on each database.

Targets (issue 18): PostgreSQL with 2 processes at least 1.5x one process; no figure worse
than SQLite's by more than 2x; the first chart under 1 s. The machines have 2 cores shared
with other work, and the writers and PostgreSQL run on the same 2 cores as the servers:
read the ratios, not the absolute figures.

    python benchmarks/team_server.py [--metrics 200000] [--postgres postgresql://USER:PW@HOST:PORT/DB]

``--postgres`` names a database whose role may create databases (default: the tests'
``MLBENCH_METRICS_TEST_POSTGRES``); a fresh database is made for the run and dropped after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

from mlbench_metrics.server import spawn
from mlbench_metrics.server.store import Store

from _common import write_results

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from postgres import session_database

JSON = {"Content-Type": "application/json"}
T0 = 1_700_000_000_000_000
CLIENT_PROCESSES = 2


def _bodies(run_id: int, first: int, count: int, size: int) -> list[bytes]:
    out = []
    for b in range(first, first + count):
        names = [f"metric_{j % 10} @ 0" for j in range(size)]
        payload = {
            "run_id": run_id,
            "batch_id": f"bench-{run_id}-{b}",
            "columns": {
                "name": names,
                "value": [0.001 * j + b for j in range(size)],
                "date_us": [T0 + b * size + j for j in range(size)],
                "metadata": '{"rank": 0, "epoch": 1}',
                "cumulative": False,
            },
        }
        out.append(json.dumps(payload).encode())
    return out


def _client(address: str, work: list[tuple[int, int, int]], start_at: float) -> int:
    """One client process: a writer per ``(run_id, first, count)``, each posting its batches on one connection."""
    host, port = address.rsplit(":", 1)
    bodies = [_bodies(run_id, first, count, 1000) for run_id, first, count in work]
    errors = []

    def writer(mine: list[bytes]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        for body in mine:
            conn.request("POST", "/api/metrics/batch/", body=body, headers=JSON)
            answer = conn.getresponse()
            answer.read()
            if answer.status not in (200, 201):
                errors.append(answer.status)
        conn.close()

    time.sleep(max(0.0, start_at - time.time()))  # every client starts at once
    pool = [threading.Thread(target=writer, args=(b,)) for b in bodies]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return len(errors)


def ingest(address: str, run_ids: list[int], writers: int, metrics: int) -> dict[str, Any]:
    """Metrics/s of ``writers`` concurrent writers (spread over ``run_ids``) posting ``metrics`` in batches of 1,000."""
    batches = metrics // 1000
    work = [
        (run_ids[w % len(run_ids)], w * batches // writers, (w + 1) * batches // writers - w * batches // writers)
        for w in range(writers)
    ]
    start_at = time.time() + 3.0  # the clients encode their bodies first
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(CLIENT_PROCESSES) as pool:
        jobs = [
            pool.apply_async(_client, (address, work[c::CLIENT_PROCESSES], start_at)) for c in range(CLIENT_PROCESSES)
        ]
        errors = sum(j.get(600) for j in jobs)
    elapsed = time.time() - start_at
    assert errors == 0, f"{errors} batches failed"
    return {
        "writers": writers,
        "runs": len(run_ids),
        "metrics": batches * 1000,
        "seconds": elapsed,
        "metrics_per_s": batches * 1000 / elapsed,
    }


def fill_chart(db: str, points: int) -> int:
    """One run with one series of ``points`` points, stored as the logger sends them."""
    store = Store(db)
    try:
        run_id = int(store.create_run(T0, name="chart", num_workers=1)["id"])
        for start in range(0, points, 1000):
            steps = range(start, start + 1000)
            dates = [T0 + s * 1000 for s in steps]
            values = [2.0 / (1 + s / 1000) + 0.05 * ((s * 7919) % 101) / 101 for s in steps]
            meta = [f'{{"rank": 0, "epoch": {s * 10 // points}, "step": {s}}}' for s in steps]
            store.add_batch(run_id, None, (["loss @ 0"] * 1000, dates, values, meta, [False] * 1000), 1000, T0)
        return run_id
    finally:
        store.close()


def fill_runs(db: str, runs: int) -> None:
    store = Store(db)
    try:
        for i in range(runs):
            run_id = int(store.create_run(T0 + i, name=f"run-{i}", num_workers=1)["id"])
            store.add_batch(
                run_id,
                None,
                (["loss @ 0"] * 10, [T0 + j for j in range(10)], [0.5] * 10, [""] * 10, [False] * 10),
                10,
                T0,
            )
    finally:
        store.close()


def timed(url: str, path: str, params: dict[str, Any] | None = None) -> float:
    start = time.perf_counter()
    answer = requests.get(url + path, params=params, headers={"Accept-Encoding": "gzip"}, timeout=120)
    answer.raise_for_status()
    return time.perf_counter() - start


def reads(db: str, chart_run: int) -> dict[str, Any]:
    """The chart (cold: a server that never read the run; then warm) and the runs table, on ``db``."""
    chart = {"metric": "loss", "max_points": 1000, "fields": "date_us,step,epoch,value"}
    with spawn(db_path=db) as server:
        cold = timed(server.url, f"/api/runs/{chart_run}/points/", chart)
        warm = statistics.median(timed(server.url, f"/api/runs/{chart_run}/points/", chart) for _ in range(5))
        runs = statistics.median(timed(server.url, "/api/runs/") for _ in range(5))
        stats = statistics.median(timed(server.url, "/api/runs/stats/") for _ in range(5))
    return {"chart_cold_s": cold, "chart_warm_s": warm, "runs_table_s": runs, "runs_stats_s": stats}


def new_run(url: str, name: str) -> int:
    form = {"name": name, "num_workers": 1, "image_name": "custom_image", "custom_image_name": "x"}
    form.update({"custom_image_command": "x", "backend": "gloo"})
    return int(requests.post(url + "/api/runs/", data=form, timeout=30).json()["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--metrics", type=int, default=200_000, help="metrics posted per configuration")
    parser.add_argument("--chart-points", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1000)
    default_pg = os.environ.get("MLBENCH_METRICS_TEST_POSTGRES", "postgresql://mlbench:mlbench@127.0.0.1:5432/mlbench")
    parser.add_argument("--postgres", default=default_pg)
    args = parser.parse_args()
    figures: dict[str, Any] = {"ingest": {}, "reads": {}}
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        pg = stack.enter_context(session_database(args.postgres, "mlbench_bench"))
        pg_reads = stack.enter_context(session_database(args.postgres, "mlbench_bench"))
        configs = [("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 4)]
        for kind, workers in configs:
            for writers, runs in ((8, 1), (64, 1), (64, 8)):
                db = os.path.join(tmp, f"ingest-{writers}-{runs}.db") if kind == "sqlite" else pg
                extra = ["--workers", str(workers)] if workers > 1 else []
                with spawn(db_path=db, args=extra) as server:
                    run_ids = [new_run(server.url, f"ingest-{kind}-{workers}-{writers}-{r}") for r in range(runs)]
                    fig = ingest(server.address, run_ids, writers, args.metrics)
                key = f"{kind}_{workers}p_{writers}w_{runs}r"
                figures["ingest"][key] = fig
                rate = fig["metrics_per_s"]
                print(f"ingest {kind:10} {workers}p, {writers:2} writers, {runs} run(s): {rate:>10,.0f} metrics/s")
        for kind, db in (("sqlite", os.path.join(tmp, "reads.db")), ("postgresql", pg_reads)):
            chart_run = fill_chart(db, args.chart_points)
            fill_runs(db, args.runs - 1)
            figures["reads"][kind] = fig = reads(db, chart_run)
            print(
                f"reads  {kind:10} first chart of {args.chart_points:,} points {fig['chart_cold_s'] * 1000:,.0f} ms "
                f"(warm {fig['chart_warm_s'] * 1000:,.0f} ms); runs table of {args.runs:,} runs "
                f"{fig['runs_table_s'] * 1000:,.0f} ms, stats {fig['runs_stats_s'] * 1000:,.0f} ms"
            )
    ing = {k: v["metrics_per_s"] for k, v in figures["ingest"].items()}
    shapes = ("8w_1r", "64w_1r", "64w_8r")
    ratios = {f"pg2_over_pg1_{w}": ing[f"postgresql_2p_{w}"] / ing[f"postgresql_1p_{w}"] for w in shapes}
    worst = min(ing[f"postgresql_{p}p_{w}"] / ing[f"sqlite_1p_{w}"] for p in (1, 2, 4) for w in shapes)
    rd = figures["reads"]
    slowest_read = max(rd["postgresql"][k] / rd["sqlite"][k] for k in rd["sqlite"])
    figures["ratios"] = {**ratios, "worst_pg_ingest_over_sqlite": worst, "worst_pg_read_time_over_sqlite": slowest_read}
    figures["targets"] = {"pg2_over_pg1": 1.5, "pg_vs_sqlite_at_most_worse": 2.0, "first_chart_s": 1.0}
    for name, value in figures["ratios"].items():
        print(f"{name}: {value:.2f}")
    write_results("team_server", figures)


if __name__ == "__main__":
    main()
