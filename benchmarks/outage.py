"""Memory and disk while the server is down, under a steady 100,000 metrics/s (issue 5).

Each case runs in its own process (so its peak RSS is its own), with the embedded server
in another process on a database in a temporary directory:

* ``up``: the server stays up; the baseline, measured in the same run.
* ``spool``: the server is stopped for the whole logging period; failed and overflowing
  batches go to the spool (the default).
* ``durable``: the same with ``durable=True`` (every record in the memory-mapped log).

A case logs ``--rate`` metrics/s for ``--seconds`` (in 10 ms ticks), sampling RSS and
the spool directory's size every 100 ms (RSS in full, and without file-backed pages: the
durable log's mapped segments count in RSS but are the kernel's page cache), then starts
the server again and times how long ``flush()`` takes to deliver everything; it checks
every metric is stored exactly once. Figures: peak RSS against the ``up`` case, spool
bytes per record, drain time.

    python benchmarks/outage.py [--seconds 60] [--rate 100000] [--cases up,spool,durable]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import spawn
from mlbench_metrics.server.store import Store

from _common import create_run, write_results


def dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512  # what the disk holds
            except OSError:
                pass  # deleted while walking
    return total


class Sampler:
    """Samples this process's RSS and the spool's size every 100 ms; owned by run_case."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.peak_rss = 0
        self.peak_anon = 0  # RSS less file-backed pages (a durable log's mapped segments are those)
        self.peak_spool = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outage-sampler", daemon=True)
        self._process = psutil.Process()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.sample()

    def sample(self) -> None:
        info = self._process.memory_info()
        self.peak_rss = max(self.peak_rss, info.rss)
        self.peak_anon = max(self.peak_anon, info.rss - info.shared)
        self.peak_spool = max(self.peak_spool, dir_size(self.spool))

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.sample()


def run_case(case: str, seconds: float, rate: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Path(tmp) / "spool"
        with spawn(db_path=str(Path(tmp) / "m.db")) as server:
            run_id = create_run(server.url, f"outage-{case}")
            log = MetricsLogger(run_id, url=server.address, durable=case == "durable", spool_dir=spool)
            log.log("warmup", 0)
            assert log.flush(60)
            if case != "up":
                server.stop()
            per_tick = rate // 100
            logged = 0
            behind = 0
            tick = threading.Event()  # never set: waiting on it paces the loop
            with Sampler(spool) as sampler:
                started = time.monotonic()
                for k in range(int(seconds * 100)):
                    for _ in range(per_tick):
                        log.log("x", logged)
                        logged += 1
                    wait = started + (k + 1) / 100 - time.monotonic()
                    if wait > 0:
                        tick.wait(wait)
                    else:
                        behind += 1
                logging_s = time.monotonic() - started
                if case != "up":
                    server.start()
                restarted = time.monotonic()
                delivered = log.flush(max(600.0, 3 * seconds))
                drain_s = time.monotonic() - restarted
            stats = log.stats
            log.close()
            store = Store(server.db_path)
            try:
                stored = store.count_metrics(run_id) - 1  # less the warm-up metric
            finally:
                store.close()
    return {
        "case": case,
        "logged": logged,
        "achieved_rate": round(logged / logging_s),
        "ticks_behind": behind,
        "peak_rss_mib": round(sampler.peak_rss / 2**20, 1),
        "peak_anon_mib": round(sampler.peak_anon / 2**20, 1),
        "peak_spool_mib": round(sampler.peak_spool / 2**20, 1),
        "spool_bytes_per_record": round(sampler.peak_spool / logged, 1) if logged else 0,
        "drain_s": round(drain_s, 2),
        "flushed": delivered,
        "stored": stored,
        "exactly_once": stored == logged,
        "spooled": stats.spooled,
        "dropped": dict(stats.dropped),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=100_000)
    parser.add_argument("--cases", default="up,spool,durable")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args.seconds, args.rate)))
        return
    results: dict[str, Any] = {}
    for case in args.cases.split(","):
        out = subprocess.run(
            [sys.executable, __file__, "--child", case, "--seconds", str(args.seconds), "--rate", str(args.rate)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[case]
        print(
            f"{case:8s} {r['logged']:>9,} logged at {r['achieved_rate']:>7,}/s  peak RSS {r['peak_rss_mib']:7.1f} MiB "
            f"(anonymous {r['peak_anon_mib']:6.1f})  "
            f"spool {r['peak_spool_mib']:7.1f} MiB ({r['spool_bytes_per_record']} B/record)  "
            f"drained in {r['drain_s']:6.2f} s  exactly once: {r['exactly_once']}  dropped: {r['dropped'] or 0}"
        )
    ratios: dict[str, float] = {}
    if "up" in results:
        base = results["up"]["peak_rss_mib"]
        for case in ("spool", "durable"):
            if case in results:
                ratios[f"{case}_rss_vs_up"] = round(results[case]["peak_rss_mib"] / base, 2)
                ratios[f"{case}_anon_vs_up"] = round(results[case]["peak_anon_mib"] / results["up"]["peak_anon_mib"], 2)
                print(
                    f"{case}: peak RSS {ratios[f'{case}_rss_vs_up']:.2f}x the server-up baseline "
                    f"(anonymous memory {ratios[f'{case}_anon_vs_up']:.2f}x)"
                )
    write_results("outage", {"seconds": args.seconds, "rate": args.rate, "cases": results, "ratios": ratios})


if __name__ == "__main__":
    main()
