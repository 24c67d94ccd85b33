"""The real dashboard at scale (issue 13): an upstream-style job against a dashboard-paced server.

Two ranks of ``examples/mlbench_core_style.py`` (mlbench_core's Tracker phases, names
``"<name> @ <rank>"``, a ``TaskResult @ 0`` at the end, switched to mlbench-metrics by its
import) each log about ``--rate`` metrics/s for ``--seconds``, against
``mlbench-metrics serve --no-extensions --pace N`` in its own process: a server that, like
the dashboard, has no batch endpoint and stores single posts one at a time, ``N`` a second.

The job runs twice in the same run, each time against fresh servers: with
``aggregate="off"`` (every record sent as logged: the baseline) and with the default
``aggregate="auto"`` (per-series aggregates when the server falls behind). Measured for
each:

* the paced server's capacity, with the upstream client's pattern, and the offered load;
* chart lag over time, sampled every second: now minus the newest point the server
  stores, over the series logged every step (``train_loss``, ``train_Prec@1``,
  ``batch_<phase>``): the newest of them, and the stalest, i.e. the chart furthest behind
  (per-epoch series and the ``TaskResult`` are left out: they are not logged continuously);
* ``close()`` time of each rank against its ``shutdown_timeout``, what it left, and the
  accounting (``logged == stored + spooled + dropped``; folded records count as spooled);
* what the paced server stored: raw records and aggregate points, and how many records
  the aggregates stand for against how many the ranks folded;
* after ``mlbench-metrics sync --to`` an embedded server with the batch endpoint, whether
  every raw record logged is stored there exactly once (the ``TaskResult``, longer than a
  logger keeps, goes to the paced server as one post of its own, and is checked there).

Targets (issue 13): lag at most 5 s throughout, close within ``shutdown_timeout``, every
raw record exactly once on the sync target.

    python benchmarks/dashboard_scale.py [--seconds 60] [--rate 200] [--pace 80] [--ranks 2] [--no-baseline]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from mlbench_metrics.records import parse_date
from mlbench_metrics.server import ServerProcess, spawn
from mlbench_metrics.server.store import Store

from _common import create_run, upstream_rate, verdict, write_results

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "mlbench_core_style.py"
PHASES = ["batch_load", "init", "fwd_pass", "comp_loss", "backprop", "agg", "opt_step", "comp_metrics"]
STEP_NAMES = frozenset(["train_loss", "train_Prec@1", *(f"batch_{p}" for p in PHASES)])  # the script's, per step
METRICS_PER_BATCH = len(STEP_NAMES)
LAG_TARGET = 5.0

Records = collections.Counter[tuple[str, int, str]]


def newest_points(session: requests.Session, server: ServerProcess, run_id: int) -> dict[str, float]:
    """Each stored series' newest point, in seconds since the epoch (what a chart ends at)."""
    answer = session.get(f"{server.url}/api/metrics/{run_id}/", params={"metric_type": "run", "last_n": 1}, timeout=30)
    answer.raise_for_status()
    return {name: parse_date(points[-1]["date"]) / 1e6 for name, points in answer.json().items() if points}


def start_ranks(
    args: argparse.Namespace, server: ServerProcess, run_id: int, spool: Path, aggregate: str
) -> list[subprocess.Popen[str]]:
    epochs = max(1, round(args.seconds / 10))
    batches = max(1, round(args.seconds * args.rate / METRICS_PER_BATCH / epochs))
    env = {
        **os.environ,
        "MLBENCH_METRICS_URL": server.address,
        "MLBENCH_METRICS_SPOOL_DIR": str(spool),
        "MLBENCH_METRICS_AGGREGATE": aggregate,
    }
    options = ["--epochs", str(epochs), "--batches", str(batches), "--rate", str(args.rate), "--report"]
    hosts = ",".join(["127.0.0.1"] * args.ranks)
    return [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), "--run_id", str(run_id), "--rank", str(rank), "--hosts", hosts, *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in range(args.ranks)
    ]


def follow_lag(procs: list[subprocess.Popen[str]], server: ServerProcess, run_id: int) -> list[dict[str, float]]:
    """Sample chart lag every second while the ranks run."""
    samples: list[dict[str, float]] = []
    started = time.time()
    with requests.Session() as session:
        while any(p.poll() is None for p in procs):
            now = time.time()
            newest = newest_points(session, server, run_id)
            steps = [t for name, t in newest.items() if name.rsplit(" @ ", 1)[0] in STEP_NAMES]
            if steps:
                samples.append(
                    {
                        "t": round(now - started, 1),
                        "lag": round(now - max(steps), 2),
                        "stalest_series_lag": round(now - min(steps), 2),
                        "series": len(newest),
                    }
                )
            time.sleep(max(0.0, 1.0 - (time.time() - now)))
    return samples


def stored_points(db_path: str, run_id: int) -> list[tuple[str, int, str, str]]:
    """Every stored point of the run as ``(name, date_us, value, metadata)``."""
    store = Store(db_path)
    try:
        return [(name, p[0], p[1], p[3]) for name, points in store.series(run_id=run_id) for p in points]
    finally:
        store.close()


def exactly_once(found: Records, expected: int) -> dict[str, Any]:
    distinct = len(found)
    return {
        "stored": sum(found.values()),
        "distinct": distinct,
        "stored_twice_or_more": sum(1 for n in found.values() if n > 1),
        "missing": max(0, expected - distinct),
        "exactly_once": distinct == expected and all(n == 1 for n in found.values()),
    }


def on_paced_server(points: list[tuple[str, int, str, str]]) -> dict[str, Any]:
    """What the paced server holds: raw records, aggregate points, and what they stand for."""
    aggregates = [json.loads(m) for _, _, _, m in points if '"aggregate"' in m]
    raw: Records = collections.Counter((n, d, v) for n, d, v, m in points if '"aggregate"' not in m)
    return {
        "points": len(points),
        "raw_records": sum(raw.values()),
        "raw_stored_twice_or_more": sum(1 for n in raw.values() if n > 1),
        "aggregate_points": len(aggregates),
        "records_in_aggregates": sum(int(a["count"]) for a in aggregates),
        "task_results": sum(n for (name, _, _), n in raw.items() if name.startswith("TaskResult")),
    }


def run_job(args: argparse.Namespace, aggregate: str) -> dict[str, Any]:
    """One job against fresh servers: lag while it runs, close, and sync --to a target."""
    with tempfile.TemporaryDirectory(prefix="dashboard-scale-") as tmp:
        spool = Path(tmp) / "spool"
        paced = spawn(os.path.join(tmp, "paced.db"), args=["--no-extensions", "--pace", str(args.pace)])
        target = spawn(os.path.join(tmp, "target.db"))
        try:
            run_id = create_run(paced.url, "dashboard-scale")  # first, so the sync target's first run matches it
            capacity = upstream_rate(paced.url, create_run(paced.url, "capacity"), max(50, int(args.pace * 3)))
            started = time.monotonic()
            procs = start_ranks(args, paced, run_id, spool, aggregate)
            lag = follow_lag(procs, paced, run_id)
            outputs = [p.communicate() for p in procs]
            elapsed = time.monotonic() - started
            reports = []
            for proc, (out, err) in zip(procs, outputs):
                if proc.returncode != 0:
                    raise SystemExit(f"a rank failed ({proc.returncode}):\n{err[-2000:]}")
                reports.append(json.loads(out.strip().splitlines()[-1]))
            paced_points = stored_points(paced.db_path, run_id)
            if create_run(target.url, "dashboard-scale") != run_id:
                raise SystemExit("the sync target's run id differs: records would go elsewhere")
            sync_started = time.monotonic()
            synced = subprocess.run(
                [sys.executable, "-m", "mlbench_metrics.cli", "sync", str(spool), "--to", target.address],
                capture_output=True,
                text=True,
            )
            sync_seconds = time.monotonic() - sync_started
            target_points = stored_points(target.db_path, run_id)
        finally:
            paced.close()
            target.close()
    logged = sum(r["logged"] for r in reports)
    return {
        "aggregate": aggregate,
        "paced_capacity_per_s": round(capacity, 1),
        "logged": logged,
        "elapsed_s": round(elapsed, 1),
        "lag": lag,
        "worst_lag_s": max((s["lag"] for s in lag), default=math.nan),
        "worst_stalest_series_lag_s": max((s["stalest_series_lag"] for s in lag), default=math.nan),
        "ranks_report": reports,
        "paced_server": on_paced_server(paced_points),
        "sync": {"exit": synced.returncode, "seconds": round(sync_seconds, 1), "stdout": synced.stdout[-2000:]},
        "exactly_once_on_target": exactly_once(collections.Counter((n, d, v) for n, d, v, _ in target_points), logged),
    }


def show(job: dict[str, Any], args: argparse.Namespace) -> None:
    offered = args.rate * args.ranks
    print(f"\n== aggregate={job['aggregate']!r} ==")
    print(
        f"paced server: {job['paced_capacity_per_s']:.0f} single posts/s with the upstream client; offered "
        f"{offered:.0f} metrics/s = {offered / job['paced_capacity_per_s']:.1f}x that"
    )
    print(f"{args.ranks} ranks logged {job['logged']} records in {job['elapsed_s']:.1f} s (close included)\n")
    lag = job["lag"]
    print("   t (s)   lag (s)   stalest series (s)   series")
    step = max(1, len(lag) // 12)
    for s in [*lag[::step], *([lag[-1]] if lag and (len(lag) - 1) % step else [])]:
        print(f"  {s['t']:6.1f}  {s['lag']:8.1f}  {s['stalest_series_lag']:19.1f}  {s['series']:7.0f}")
    worst = job["worst_stalest_series_lag_s"]
    print(
        f"\nchart lag: worst {job['worst_lag_s']:.1f} s, stalest series {worst:.1f} s; target <= {LAG_TARGET:g} s: ",
        end="",
    )
    print(verdict(worst, LAG_TARGET, higher_is_better=False))
    for r in job["ranks_report"]:
        within = r["close_seconds"] <= r["shutdown_timeout"]
        dropped = sum((r["dropped"] or {}).values())
        balanced = r["logged"] == r["stored"] + r["spooled"] + dropped
        print(
            f"rank {r['rank']}: close() {r['close_seconds']:.2f} s (shutdown_timeout {r['shutdown_timeout']:g} s, "
            f"{'within' if within else 'OVER'}); logged {r['logged']}, stored raw {r['stored']}, folded "
            f"{r['folded']} into {r['aggregates']} aggregates, left for sync {r['spooled'] - r['folded']}, "
            f"dropped {dropped}; logged == stored + spooled + dropped: {balanced}"
        )
    paced = job["paced_server"]
    folded = sum(r["folded"] for r in job["ranks_report"])
    print(
        f"paced server: {paced['raw_records']} raw records ({paced['raw_stored_twice_or_more']} stored twice), "
        f"{paced['aggregate_points']} aggregate points standing for {paced['records_in_aggregates']} records "
        f"(the ranks folded {folded}); TaskResult stored {paced['task_results']} time(s)"
    )
    sync = job["sync"]
    print(f"sync --to <embedded server>: exit {sync['exit']} in {sync['seconds']:.1f} s")
    print(f"sync target: {job['exactly_once_on_target']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the ranks log")
    parser.add_argument("--rate", type=float, default=200.0, help="metrics/s per rank")
    parser.add_argument("--pace", type=float, default=80.0, help="single posts/s the server stores")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true", help="skip the aggregate='off' run")
    args = parser.parse_args()

    jobs = [] if args.no_baseline else [run_job(args, "off")]
    jobs.append(run_job(args, "auto"))
    for job in jobs:
        show(job, args)
    auto = jobs[-1]
    closes = [r["close_seconds"] <= r["shutdown_timeout"] for r in auto["ranks_report"]]
    print("\n== targets (aggregate='auto') ==")
    lag_verdict = verdict(auto["worst_stalest_series_lag_s"], LAG_TARGET, higher_is_better=False)
    print(f"chart lag <= {LAG_TARGET:g} s throughout: {lag_verdict}")
    print(f"close() within shutdown_timeout: {'meets target' if all(closes) else 'MISSES target'}")
    once = auto["exactly_once_on_target"]["exactly_once"]
    print(f"every raw record exactly once on the sync target: {'meets target' if once else 'MISSES target'}")
    if len(jobs) > 1:
        off = jobs[0]
        print(
            f"against aggregate='off' in this run: worst lag {off['worst_stalest_series_lag_s']:.1f} s -> "
            f"{auto['worst_stalest_series_lag_s']:.1f} s"
        )
    write_results(
        "dashboard_scale",
        {"seconds": args.seconds, "rate_per_rank": args.rate, "ranks": args.ranks, "pace": args.pace, "jobs": jobs},
    )


if __name__ == "__main__":
    main()
