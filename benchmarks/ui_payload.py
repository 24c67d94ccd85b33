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
  ABBA order (small, big, big, small) so drift hits both alike. These views find the
  series' chunks decoded in the server's cache (a person coming back to a run); the
  very first view of a series, which decodes them, is measured once on a twin run
  (``first_view_ms``).

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

from _common import median, verdict, write_results

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAYLOAD_TARGET = 200_000
FIRST_CHART_TARGET_MS = 1000.0


def fill(db_path: str, sizes: list[int]) -> dict[Any, int]:
    """One run per size, a twin for the first view (key ``("twin", n)``), and the 100-point baseline."""
    store = Store(db_path)
    runs: dict[Any, int] = {}
    t0 = 1_700_000_000_000_000
    try:
        for key in [100, *sizes, *[("twin", n) for n in sizes]]:
            n = key[1] if isinstance(key, tuple) else key
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
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.goto(f"{url}/#/run/{run_id}")
        page.wait_for_function("() => window.__mlbenchFirstChart", timeout=60_000)
        return float(page.evaluate("() => window.__mlbenchFirstChart"))
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeat", type=int, default=3, help="ABBA blocks per size for the browser timing")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from playwright.sync_api import sync_playwright

    tmp = tempfile.mkdtemp(prefix="mlbench-ui-bench-")
    db_path = os.path.join(tmp, "metrics.db")
    try:
        print(f"filling {db_path} ...", flush=True)
        runs = fill(db_path, sizes)
        results: dict[str, Any] = {"sizes": {}}
        with spawn(db_path) as server, sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            first_chart_ms(browser, server.url, runs[100])  # warm the browser up
            columns = [
                "points",
                "wire KB",
                "json KB",
                "dash KB",
                "cold s",
                "warm s",
                "dash s",
                "1st view",
                "chart ms",
                "base ms",
                "ratio",
            ]
            print(" ".join(f"{c:>9}" for c in columns))
            for n in sizes:
                first_view = first_chart_ms(browser, server.url, runs[("twin", n)])
                cold = chart_request(server.url, runs[n])  # the server's first read of this series
                warm = [chart_request(server.url, runs[n]) for _ in range(3)]
                dash = dashboard_request(server.url, runs[n])
                big: list[float] = []
                base: list[float] = []
                for _ in range(args.repeat):  # ABBA
                    base.append(first_chart_ms(browser, server.url, runs[100]))
                    big.append(first_chart_ms(browser, server.url, runs[n]))
                    big.append(first_chart_ms(browser, server.url, runs[n]))
                    base.append(first_chart_ms(browser, server.url, runs[100]))
                figures = {
                    "wire_bytes": cold["wire_bytes"],
                    "json_bytes": cold["json_bytes"],
                    "dashboard_json_bytes": dash["json_bytes"],
                    "payload_ratio_vs_dashboard": round(cold["json_bytes"] / dash["json_bytes"], 5),
                    "cold_seconds": round(cold["seconds"], 3),
                    "warm_seconds": round(median([w["seconds"] for w in warm]), 3),
                    "dashboard_seconds": round(dash["seconds"], 3),
                    "first_view_ms": round(first_view, 1),
                    "first_chart_ms_median": round(median(big), 1),
                    "first_chart_ms_all": [round(b, 1) for b in big],
                    "baseline_100_points_ms_median": round(median(base), 1),
                    "first_chart_ratio_vs_100_points": round(median(big) / median(base), 2),
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
                    f"{first_view:.0f}",
                    f"{figures['first_chart_ms_median']:.1f}",
                    f"{figures['baseline_100_points_ms_median']:.1f}",
                    f"{figures['first_chart_ratio_vs_100_points']:.2f}",
                ]
                print(" ".join(f"{c:>9}" for c in row), flush=True)
            browser.close()
        largest = results["sizes"][str(max(sizes))]
        payload, first = largest["json_bytes"], largest["first_chart_ms_median"]
        print(
            f"\n{max(sizes):,} points: payload {payload / 1e3:.0f} KB "
            f"({verdict(payload, PAYLOAD_TARGET, higher_is_better=False)} of {PAYLOAD_TARGET / 1e3:.0f} KB), "
            f"first chart {first:.0f} ms ({verdict(first, FIRST_CHART_TARGET_MS, higher_is_better=False)} of "
            f"{FIRST_CHART_TARGET_MS:.0f} ms; 100 points took {largest['baseline_100_points_ms_median']:.0f} ms; "
            f"the series' very first view took {largest['first_view_ms']:.0f} ms)"
        )
        results["targets"] = {"payload_bytes": PAYLOAD_TARGET, "first_chart_ms": FIRST_CHART_TARGET_MS}
        write_results("ui_payload", results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
