"""The real dashboard at scale (issue 13): an upstream-style job against a dashboard-paced server.

Two ranks of ``examples/mlbench_core_style.py`` (mlbench_core's Tracker phases, names
``"<name> @ <rank>"``, a ``TaskResult @ 0`` at the end, switched to mlbench-metrics by its
import) each log about ``--rate`` metrics/s for ``--seconds``, against
``mlbench-metrics serve --no-extensions --pace N`` in its own process: a server that, like
the dashboard, has no batch endpoint and stores single posts one at a time, ``N`` a second.

Measured:

* the paced server's capacity, with the upstream client's pattern (the baseline, in the
  same run), and the offered load against it;
* chart lag over time, sampled every second: now minus the newest point the server
  stores, over the series logged every step (``train_*``, ``batch_*``): the newest of
  them, and the stalest, i.e. the chart furthest behind (per-epoch series and the
  ``TaskResult``, sent on its own, are left out: they are not logged continuously);
* ``close()`` time of each rank against its ``shutdown_timeout``, and what it left;
* after ``mlbench-metrics sync`` of the ranks' spools to an embedded server with the
  batch endpoint, whether every raw record is stored exactly once: on the sync target
  alone (the goal once logging to a slow server keeps the raw records for it) and on both
  servers together (today's shape: what the paced server stored, plus the rest).

Targets (issue 13): lag at most 5 s throughout, close within ``shutdown_timeout``, every
raw record exactly once. The delivery core of today does not meet them; its figures are
the baseline for the work that will.

    python benchmarks/dashboard_scale.py [--seconds 60] [--rate 200] [--pace 80] [--ranks 2]
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
METRICS_PER_BATCH = 10  # the script's: loss, accuracy and 8 phase times per batch
LAG_TARGET = 5.0
STEP_SERIES = ("train_", "batch_")  # the script logs these every step


def newest_points(session: requests.Session, server: ServerProcess, run_id: int) -> dict[str, float]:
    """Each stored series' newest point, in seconds since the epoch (what a chart ends at)."""
    answer = session.get(f"{server.url}/api/metrics/{run_id}/", params={"metric_type": "run", "last_n": 1}, timeout=30)
    answer.raise_for_status()
    return {name: parse_date(points[-1]["date"]) / 1e6 for name, points in answer.json().items() if points}


def start_ranks(
    args: argparse.Namespace, server: ServerProcess, run_id: int, spool: Path
) -> list[subprocess.Popen[str]]:
    epochs = max(1, round(args.seconds / 10))
    batches = max(1, round(args.seconds * args.rate / METRICS_PER_BATCH / epochs))
    env = {**os.environ, "MLBENCH_METRICS_URL": server.address, "MLBENCH_METRICS_SPOOL_DIR": str(spool)}
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
            steps = [t for name, t in newest.items() if name.startswith(STEP_SERIES)]
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


def records(db_path: str, run_id: int) -> collections.Counter[tuple[str, int, str]]:
    """Every stored point of the run as ``(name, date_us, value)``, counted."""
    store = Store(db_path)
    try:
        return collections.Counter(
            (name, date_us, value) for name, points in store.series(run_id=run_id) for date_us, value, _, _ in points
        )
    finally:
        store.close()


def exactly_once(found: collections.Counter[tuple[str, int, str]], expected: int) -> dict[str, Any]:
    distinct = len(found)
    return {
        "stored": sum(found.values()),
        "distinct": distinct,
        "stored_twice_or_more": sum(1 for n in found.values() if n > 1),
        "missing": max(0, expected - distinct),
        "exactly_once": distinct == expected and all(n == 1 for n in found.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the ranks log")
    parser.add_argument("--rate", type=float, default=200.0, help="metrics/s per rank")
    parser.add_argument("--pace", type=float, default=80.0, help="single posts/s the server stores")
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="dashboard-scale-") as tmp:
        spool = Path(tmp) / "spool"
        paced = spawn(os.path.join(tmp, "paced.db"), args=["--no-extensions", "--pace", str(args.pace)])
        target = spawn(os.path.join(tmp, "target.db"))
        try:
            run_id = create_run(paced.url, "dashboard-scale")  # first, so the sync target's first run matches it
            capacity = upstream_rate(paced.url, create_run(paced.url, "capacity"), max(50, int(args.pace * 3)))
            offered = args.rate * args.ranks
            print(f"paced server: {capacity:.0f} single posts/s with the upstream client (asked for {args.pace:g})")
            print(
                f"offered: {offered:.0f} metrics/s from {args.ranks} ranks = {offered / capacity:.1f}x what it stores"
            )

            started = time.monotonic()
            procs = start_ranks(args, paced, run_id, spool)
            lag = follow_lag(procs, paced, run_id)
            outputs = [p.communicate() for p in procs]
            elapsed = time.monotonic() - started
            reports = []
            for proc, (out, err) in zip(procs, outputs):
                if proc.returncode != 0:
                    raise SystemExit(f"a rank failed ({proc.returncode}):\n{err[-2000:]}")
                reports.append(json.loads(out.strip().splitlines()[-1]))
            paced_records = records(paced.db_path, run_id)

            target_run = create_run(target.url, "dashboard-scale")
            if target_run != run_id:
                raise SystemExit(f"the sync target's run is {target_run}, not {run_id}: records would go elsewhere")
            sync_started = time.monotonic()
            synced = subprocess.run(
                [sys.executable, "-m", "mlbench_metrics.cli", "sync", str(spool), "--url", target.address],
                capture_output=True,
                text=True,
            )
            sync_seconds = time.monotonic() - sync_started
            target_records = records(target.db_path, run_id)
        finally:
            paced.close()
            target.close()

    logged = sum(r["logged"] for r in reports) + 1  # TaskResult @ 0: one post of its own (longer than log() keeps)
    worst = max((s["lag"] for s in lag), default=math.nan)
    worst_series = max((s["stalest_series_lag"] for s in lag), default=math.nan)
    delivered = sum(r["stored"] for r in reports) / elapsed
    print(f"\n{args.ranks} ranks logged {logged} records in {elapsed:.1f} s (close included)")
    print(f"delivered while they ran: {delivered:.0f} metrics/s = {delivered / capacity:.2f}x the server's capacity\n")
    print("   t (s)   lag (s)   stalest series (s)   series")
    step = max(1, len(lag) // 15)
    for s in [*lag[::step], *([lag[-1]] if lag and (len(lag) - 1) % step else [])]:
        print(f"  {s['t']:6.1f}  {s['lag']:8.1f}  {s['stalest_series_lag']:19.1f}  {s['series']:7.0f}")
    print(
        f"\nchart lag: worst {worst:.1f} s (stalest series {worst_series:.1f} s); target <= {LAG_TARGET:g} s: ", end=""
    )
    print(verdict(worst_series, LAG_TARGET, higher_is_better=False))
    for r in reports:
        within = r["close_seconds"] <= r["shutdown_timeout"]
        print(
            f"rank {r['rank']}: close() {r['close_seconds']:.2f} s (shutdown_timeout {r['shutdown_timeout']:g} s, "
            f"{'within' if within else 'OVER'}); logged {r['logged']}, stored {r['stored']}, "
            f"spooled {r['spooled']}, dropped {r['dropped'] or 0}, left at close {r['not_delivered']}"
        )
    target_check = exactly_once(target_records, logged)
    union_check = exactly_once(paced_records + target_records, logged)
    print(
        f"sync --url <embedded server>: exit {synced.returncode} in {sync_seconds:.1f} s: "
        f"{synced.stdout.strip()[-300:]}"
    )
    print(f"sync target alone: {target_check}")
    print(f"both servers:      {union_check}")
    print(
        "every raw record exactly once on the sync target: "
        + ("meets target" if target_check["exactly_once"] else "MISSES target")
    )

    write_results(
        "dashboard_scale",
        {
            "seconds": args.seconds,
            "rate_per_rank": args.rate,
            "ranks": args.ranks,
            "pace": args.pace,
            "paced_capacity_per_s": round(capacity, 1),
            "offered_per_s": offered,
            "logged": logged,
            "elapsed_s": round(elapsed, 1),
            "delivered_per_s": round(delivered, 1),
            "lag": lag,
            "worst_lag_s": worst,
            "worst_stalest_series_lag_s": worst_series,
            "ranks_report": reports,
            "sync": {"exit": synced.returncode, "seconds": round(sync_seconds, 1), "stdout": synced.stdout[-2000:]},
            "exactly_once_on_target": target_check,
            "exactly_once_on_both": union_check,
        },
    )


if __name__ == "__main__":
    main()
