"""``GET /api/runs/stats/`` (the runs page asks every 2 s) with many runs: kept counts against a scan.

A database of ``--runs`` runs of 5 series, 100 chunks each (keys only: statistics never
read points). Measured in one run: the scan of every chunk the statistics used to be
(the baseline), :meth:`Store.run_stats` on the counts kept per series, and what opening
costs (the first open of a database written before the counts fills them).

    python benchmarks/run_stats.py [--runs 2000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from mlbench_metrics.server.store import Store

from _common import median, write_results

_SCAN = "SELECT owner, COUNT(DISTINCT name), SUM(count), MAX(last_date) FROM chunks WHERE owner > 0 GROUP BY owner"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    series, chunks = 5, 100
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "stats.db")
        Store(path).close()
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM series_stats")  # as a database written before the counts
            conn.executemany("INSERT INTO runs (name, created_at, num_workers) VALUES ('r', 0, 1)", [()] * args.runs)
            rows = (
                (r, f"m{n}", c * 1000, r * 1_000_000 + n * 1000 + c, c * 1000 + 999, 250, "x")
                for r in range(1, args.runs + 1)
                for n in range(series)
                for c in range(chunks)
            )
            conn.executemany(
                "INSERT INTO chunks (owner, name, first_date, id, last_date, count, data) VALUES (?,?,?,?,?,?,?)", rows
            )
        conn.close()
        with sqlite3.connect(path) as conn:
            scan = []
            for _ in range(5):
                started = time.perf_counter()
                conn.execute(_SCAN).fetchall()
                scan.append(time.perf_counter() - started)
        conn.close()
        started = time.perf_counter()
        Store(path).close()
        first_open = time.perf_counter() - started
        started = time.perf_counter()
        store = Store(path)
        later_open = time.perf_counter() - started
        kept = []
        try:
            for _ in range(5):
                started = time.perf_counter()
                store.run_stats()
                kept.append(time.perf_counter() - started)
        finally:
            store.close()
    figures = {
        "runs": args.runs,
        "chunks": args.runs * series * chunks,
        "scan_s": median(scan),
        "kept_counts_s": median(kept),
        "speedup": median(scan) / median(kept),
        "first_open_s": first_open,
        "later_open_s": later_open,
    }
    print(
        f"{args.runs} runs, {figures['chunks']:,} chunks: scan {median(scan) * 1000:.0f} ms, "
        f"kept counts {median(kept) * 1000:.1f} ms ({figures['speedup']:.0f}x); "
        f"first open {first_open * 1000:.0f} ms, later opens {later_open * 1000:.0f} ms"
    )
    write_results("run_stats", figures)


if __name__ == "__main__":
    main()
