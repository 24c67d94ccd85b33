"""How fast the embedded server stores metrics, with the server in its own process.

Measured in one run, on a kept-alive connection from this process:

* single ``POST /api/metrics/`` (the dashboard's way): metrics/s and round-trip time;
* ``POST /api/metrics/batch/`` with batches of 1,000, in the row form and the columnar
  form, client encoding included: metrics/s, and the ratio to single posts.

Targets (issue 2): batch >= 150,000 metrics/s; single-post median RTT <= 1 ms.

    python benchmarks/server_throughput.py [--metrics 300000] [--singles 3000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from typing import Any
from urllib.parse import urlencode

import requests

from mlbench_metrics.server import spawn
from mlbench_metrics.server.store import Store

from _common import create_run, median, percentile, verdict, write_results

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
JSON = {"Content-Type": "application/json"}


def connect(address: str) -> http.client.HTTPConnection:
    host, port = address.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=60)


def singles(address: str, run_id: int, count: int) -> dict[str, Any]:
    conn = connect(address)
    rtts: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        body = urlencode(
            {
                "run_id": run_id,
                "name": "loss @ 0",
                "cumulative": "False",
                "date": "2026-11-27 01:00:27.108829",
                "value": str(i * 0.5),
                "metadata": "",
            }
        )
        t0 = time.perf_counter()
        conn.request("POST", "/api/metrics/", body=body, headers=FORM)
        response = conn.getresponse()
        response.read()
        rtts.append(time.perf_counter() - t0)
        assert response.status == 201
    elapsed = time.perf_counter() - start
    conn.close()
    return {
        "metrics": count,
        "seconds": elapsed,
        "metrics_per_s": count / elapsed,
        "rtt_median_ms": median(rtts) * 1000,
        "rtt_p99_ms": percentile(rtts, 0.99) * 1000,
    }


def singles_requests(url: str, run_id: int, count: int) -> dict[str, Any]:
    """The same through a requests.Session, for reference (the client's own cost shows)."""
    rtts = []
    with requests.Session() as session:
        for i in range(count):
            t0 = time.perf_counter()
            r = session.post(
                f"{url}/api/metrics/",
                data={
                    "run_id": run_id,
                    "name": "loss @ 0",
                    "cumulative": False,
                    "date": "2026-11-27 01:00:27",
                    "value": i,
                    "metadata": "",
                },
            )
            rtts.append(time.perf_counter() - t0)
            assert r.status_code == 201
    return {"rtt_median_ms": median(rtts) * 1000}


def make_body(form: str, run_id: int, batch_no: int, size: int, base_us: int) -> bytes:
    names = [f"metric_{j % 10} @ 0" for j in range(size)]
    values = [str(0.001 * j + batch_no) for j in range(size)]
    dates = [base_us + batch_no * size + j for j in range(size)]
    meta = '{"rank": 0, "epoch": 1}'
    batch_id = f"{form}-{batch_no}"
    if form == "columns":
        payload: dict[str, Any] = {
            "run_id": run_id,
            "batch_id": batch_id,
            "columns": {"name": names, "value": values, "date_us": dates, "metadata": meta, "cumulative": False},
        }
    else:
        payload = {
            "run_id": run_id,
            "batch_id": batch_id,
            "metrics": [
                {"name": n, "value": v, "date_us": d, "metadata": meta, "cumulative": False}
                for n, v, d in zip(names, values, dates)
            ],
        }
    return json.dumps(payload).encode()


def batches(address: str, run_id: int, form: str, total: int, size: int, threads: int = 2) -> dict[str, Any]:
    count = total // size
    base_us = 1_764_000_000_000_000
    errors: list[str] = []

    def worker(index: int) -> None:
        conn = connect(address)
        for b in range(index, count, threads):
            body = make_body(form, run_id, b, size, base_us)  # encoding is part of the cost
            conn.request("POST", "/api/metrics/batch/", body=body, headers=JSON)
            response = conn.getresponse()
            text = response.read()
            if response.status != 201:
                errors.append(text.decode()[:200])
        conn.close()

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    assert not errors, errors[:3]
    return {"metrics": count * size, "batch_size": size, "seconds": elapsed, "metrics_per_s": count * size / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=300_000, help="metrics per batch form")
    parser.add_argument("--singles", type=int, default=3000, help="single posts")
    args = parser.parse_args()

    with spawn() as server:
        run_id = create_run(server.url, "bench")
        singles(server.address, run_id, 200)  # warm up
        single = singles(server.address, run_id, args.singles)
        via_requests = singles_requests(server.url, run_id, min(args.singles, 1000))
        rows = batches(server.address, run_id, "rows", args.metrics, 1000)
        cols = batches(server.address, run_id, "columns", args.metrics, 1000)
        store = Store(server.db_path)
        stored = store.count_metrics(run_id)
        store.close()
    expected = 200 + args.singles + min(args.singles, 1000) + rows["metrics"] + cols["metrics"]
    assert stored == expected, (stored, expected)

    print(
        f"single POST /api/metrics/ (http.client keep-alive): {single['metrics_per_s']:,.0f} metrics/s, "
        f"median RTT {single['rtt_median_ms']:.3f} ms (p99 {single['rtt_p99_ms']:.3f} ms) "
        f"-> {verdict(single['rtt_median_ms'], 1.0, higher_is_better=False)} (<= 1 ms)"
    )
    print(f"single POST through requests.Session: median RTT {via_requests['rtt_median_ms']:.3f} ms")
    for label, fig in (("rows", rows), ("columns", cols)):
        print(
            f"batch endpoint, {label} form, batches of 1,000: {fig['metrics_per_s']:,.0f} metrics/s "
            f"= {fig['metrics_per_s'] / single['metrics_per_s']:.0f}x single posts "
            f"-> {verdict(fig['metrics_per_s'], 150_000)} (>= 150,000/s)"
        )
    print(f"all {stored:,} metrics stored")
    write_results(
        "server_throughput",
        {
            "single_post": single,
            "single_post_requests_session": via_requests,
            "batch_rows": rows,
            "batch_columns": cols,
            "ratio_rows_vs_single": rows["metrics_per_s"] / single["metrics_per_s"],
            "ratio_columns_vs_single": cols["metrics_per_s"] / single["metrics_per_s"],
            "targets": {"batch_metrics_per_s": 150_000, "single_rtt_median_ms": 1.0},
        },
    )


if __name__ == "__main__":
    main()
