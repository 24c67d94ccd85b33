"""What one chart of the web UI costs: payload bytes and time to first chart, 10k to 1M points.

For each size, one run holds one series of N points, stored as the logger sends them
(batches of 1,000, metadata with rank, epoch and step). The server runs in its own
process. Measured in one run:

* the chart's request (``GET /api/runs/{id}/points/?metric=loss&max_points=1000``): bytes
  as sent (gzip) and uncompressed, and the server's answer time, cold (first read) and
  warm; against the baseline of the dashboard's own read of the same series
  (``GET /api/metrics/{id}/?metric_type=run&metric_filter=loss @ 0``: every point);
* time to first chart in headless Chromium: from navigation start to the first drawn
  chart of ``/#/run/{id}``, against the baseline of a run of 100 points, measured in
  ABBA blocks (small, big, big, small) so drift hits both alike. The first view of a
  series (``first_view``: the server reads it from the database) is measured on runs
  of their own, each viewed once (twins of the same data), against first views of
  100-point runs; later views (``warm_view``: the server keeps decoded chunks) on one
  run viewed again and again.

Targets (issue 11): a chart's payload under about 200 KB and its first drawing under 1 s
for 1,000,000 points.

    python benchmarks/ui_payload.py [--sizes 10000,100000,1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from typing import Any

import requests

from mlbench_metrics.server import spawn
from mlbench_metrics.server.store import Store

from _common import CHROMIUM_ARGS, median, verdict, write_results

PAYLOAD_TARGET = 200_000
FIRST_CHART_TARGET_MS = 1000.0


def fill(db_path: str, twins: dict[int, int]) -> dict[tuple[int, int], int]:
    """For each size, that many runs (twins) of the same series: run id by ``(size, twin)``."""
    store = Store(db_path)
    runs: dict[tuple[int, int], int] = {}
    t0 = 1_700_000_000_000_000
    try:
        for key in [(n, k) for n, count in twins.items() for k in range(count)]:
            n = key[0]
            run_id = int(store.create_run(t0, name=f"points-{n}", num_workers=1)["id"])
            for start in range(0, n, 1000):
                count = min(1000, n - start)
                steps = range(start, start + count)
                dates = [t0 + s * 1000 for s in steps]
                values = [2.0 / (1 + s / 1000) + 0.05 * ((s * 7919) % 101) / 101 for s in steps]
                meta = [f'{{"rank": 0, "epoch": {s * 10 // n}, "step": {s}}}' for s in steps]
                store.add_batch(run_id, None, (["loss @ 0"] * count, dates, values, meta, [False] * count), count, t0)
            runs[key] = run_id
    finally:
        store.close()
    return runs


def chart_request(url: str, run_id: int) -> dict[str, Any]:
    params = {"metric": "loss", "max_points": 1000, "fields": "date_us,step,epoch,value"}
    start = time.perf_counter()
    r = requests.get(
        f"{url}/api/runs/{run_id}/points/", params=params, headers={"Accept-Encoding": "gzip"}, stream=True
    )
    wire = len(r.raw.read(decode_content=False))
    seconds = time.perf_counter() - start
    plain = requests.get(f"{url}/api/runs/{run_id}/points/", params=params, headers={"Accept-Encoding": "identity"})
    return {"wire_bytes": wire, "json_bytes": len(plain.content), "seconds": seconds}


def dashboard_request(url: str, run_id: int) -> dict[str, Any]:
    start = time.perf_counter()
    r = requests.get(
        f"{url}/api/metrics/{run_id}/",
        params={"metric_type": "run", "metric_filter": "loss @ 0"},
        headers={"Accept-Encoding": "identity"},
    )
    return {"json_bytes": len(r.content), "seconds": time.perf_counter() - start}


def first_chart_ms(browser: Any, url: str, run_id: int) -> float:
    """Milliseconds from navigation to the first chart drawn (the page's own clock)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{url}/#/run/{run_id}")
        # Polled by a timer, not every animation frame: that would make Chromium render 60
        # frames a second, taking CPU from the server on a 2-core machine while it answers.
        page.wait_for_function("() => window.__mlbenchFirstChart", timeout=60_000, polling=50)
        return float(page.evaluate("() => window.__mlbenchFirstChart"))
    finally:
        context.close()


def abba(measure: Any, base: list[int], big: list[int], repeat: int) -> tuple[list[float], list[float]]:
    """``repeat`` blocks of (base, big, big, base) views; ``base`` and ``big`` are consumed in order."""
    out_base: list[float] = []
    out_big: list[float] = []
    for b in range(repeat):
        out_base.append(measure(base[2 * b % len(base)]))
        out_big.append(measure(big[2 * b % len(big)]))
        out_big.append(measure(big[(2 * b + 1) % len(big)]))
        out_base.append(measure(base[(2 * b + 1) % len(base)]))
    return out_base, out_big


def spread(values: list[float]) -> str:
    return f"{median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=3, help="ABBA blocks per size for the browser timings")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    # Each block views two new runs of each size once, and two new 100-point runs; one
    # more of each for the API's answer time and the warm views.
    twins = 2 * args.repeat + 1
    counts = {100: 2 * args.repeat * len(sizes) + 1, **{n: twins for n in sizes}}

    from playwright.sync_api import sync_playwright

    tmp = tempfile.mkdtemp(prefix="mlbench-ui-bench-")
    db_path = os.path.join(tmp, "metrics.db")
    try:
        print(f"filling {db_path} ...", flush=True)
        start = time.perf_counter()
        runs = fill(db_path, counts)
        filled = time.perf_counter() - start
        print(f"filled in {filled:.1f} s", flush=True)
        results: dict[str, Any] = {"sizes": {}, "fill_seconds": round(filled, 1), "twins": counts}
        with spawn(db_path) as server, sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS
            )

            def view(run_id: int) -> float:
                return first_chart_ms(browser, server.url, run_id)

            view(runs[(100, counts[100] - 1)])  # warm the browser up
            columns = ["points", "wire KB", "json KB", "dash KB", "cold s", "warm s", "dash s"]
            columns += ["first view ms", "100 pts first", "ratio", "warm view ms", "100 pts warm"]
            print(" | ".join(columns))
            base_cold = [runs[(100, k)] for k in range(counts[100] - 1)]
            for n in sizes:
                api_run = runs[(n, twins - 1)]
                cold = chart_request(server.url, api_run)  # the server's first read of this series
                warm = [chart_request(server.url, api_run) for _ in range(3)]
                dash = dashboard_request(server.url, api_run)
                # Every big run and every 100-point run is viewed here for the first time.
                base_first, big_first = abba(
                    view, base_cold[: 2 * args.repeat], [runs[(n, k)] for k in range(twins - 1)], args.repeat
                )
                # Series read before (their chunks in the server's cache): the API's run, just read.
                base_warm, big_warm = abba(view, [runs[(100, counts[100] - 1)]], [api_run], args.repeat)
                figures = {
                    "wire_bytes": cold["wire_bytes"],
                    "json_bytes": cold["json_bytes"],
                    "dashboard_json_bytes": dash["json_bytes"],
                    "payload_ratio_vs_dashboard": round(cold["json_bytes"] / dash["json_bytes"], 5),
                    "cold_seconds": round(cold["seconds"], 3),
                    "warm_seconds": round(median([w["seconds"] for w in warm]), 3),
                    "dashboard_seconds": round(dash["seconds"], 3),
                    "first_view_ms_median": round(median(big_first), 1),
                    "first_view_ms_all": [round(b, 1) for b in big_first],
                    "baseline_100_points_first_view_ms_median": round(median(base_first), 1),
                    "first_view_ratio_vs_100_points": round(median(big_first) / median(base_first), 2),
                    "warm_view_ms_median": round(median(big_warm), 1),
                    "warm_view_ms_all": [round(b, 1) for b in big_warm],
                    "baseline_100_points_warm_view_ms_median": round(median(base_warm), 1),
                    "warm_view_ratio_vs_100_points": round(median(big_warm) / median(base_warm), 2),
                }
                results["sizes"][str(n)] = figures
                row = [
                    f"{n:,}",
                    f"{cold['wire_bytes'] / 1e3:.1f}",
                    f"{cold['json_bytes'] / 1e3:.1f}",
                    f"{dash['json_bytes'] / 1e3:.1f}",
                    f"{cold['seconds']:.3f}",
                    f"{figures['warm_seconds']:.3f}",
                    f"{dash['seconds']:.3f}",
                    spread(big_first),
                    spread(base_first),
                    f"{figures['first_view_ratio_vs_100_points']:.2f}",
                    spread(big_warm),
                    spread(base_warm),
                ]
                print(" | ".join(row), flush=True)
                base_cold = base_cold[2 * args.repeat :]
            browser.close()
        largest = results["sizes"][str(max(sizes))]
        payload, first = largest["json_bytes"], largest["first_view_ms_median"]
        print(
            f"\n{max(sizes):,} points: payload {payload / 1e3:.0f} KB "
            f"({verdict(payload, PAYLOAD_TARGET, higher_is_better=False)} of {PAYLOAD_TARGET / 1e3:.0f} KB), "
            f"first view {first:.0f} ms ({verdict(first, FIRST_CHART_TARGET_MS, higher_is_better=False)} of "
            f"{FIRST_CHART_TARGET_MS:.0f} ms; slowest {max(largest['first_view_ms_all']):.0f} ms; a 100-point run's "
            f"first view took {largest['baseline_100_points_first_view_ms_median']:.0f} ms; later views "
            f"{largest['warm_view_ms_median']:.0f} ms)"
        )
        results["targets"] = {"payload_bytes": PAYLOAD_TARGET, "first_chart_ms": FIRST_CHART_TARGET_MS}
        write_results("ui_payload", results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
