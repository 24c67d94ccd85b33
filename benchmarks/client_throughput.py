"""ApiClient against the upstream pattern: 2,000 metrics, all futures resolved.

The server runs in its own process (``mlbench-metrics serve``). Measured in rounds,
interleaved, so that the machine's noise hits every contender alike:

* upstream: ``executor.submit(requests.post, url, data=..., timeout=180)``, 5 workers,
  a new connection per call (what ``mlbench_core.api.ApiClient.post_metric`` does);
* ``ApiClient.post_metric`` single calls (pooled keep-alive connections, 5 workers);
* ``ApiClient.post_metrics`` through the batch endpoint;
* ``ApiClient.post_metrics`` against a server without the batch endpoint
  (``serve --no-extensions``, as the dashboard), which fans out single posts.

Targets (issue 3): single >= 1.3x upstream; batch >= 50x; fan-out never slower.

Then one request at a time (issue 21), the time of each POST and GET, against a server that
writes its answers in several segments without ``TCP_NODELAY`` (``tests/segmented.py``, as
Django's ``runserver``: the dashboard) and against the embedded server:

* upstream's pattern: ``requests.post`` / ``requests.get``, a new connection per request;
* a plain ``requests.Session``, kept-alive connections (the 40 ms delayed-ACK stall);
* ``ApiClient`` (kept-alive connections that ask for prompt ACKs).

Target: ApiClient at least as fast as upstream's pattern against either server.

    python benchmarks/client_throughput.py [--metrics 2000] [--rounds 3] [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import requests

from mlbench_metrics import ApiClient, Metric
from mlbench_metrics.server import spawn

from _common import create_run, upstream_rate, verdict, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from segmented import SegmentedServer


def _median_ms(call: Callable[[int], object], n: int) -> float:
    """Median milliseconds of ``call(i)`` over ``n`` sequential calls (after one warm-up)."""
    call(-1)
    times = []
    for i in range(n):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def one_at_a_time(address: str, run_id: int, n: int) -> dict[str, float]:
    """Median ms per POST and per GET, one request at a time, for each client pattern."""
    url = f"http://{address}/api"

    def form(i: int) -> dict[str, object]:
        return {"run_id": run_id, "name": "seq @ 0", "cumulative": False, "value": str(i), "metadata": ""}

    out: dict[str, float] = {}
    out["upstream_post"] = _median_ms(lambda i: requests.post(f"{url}/metrics/", data=form(i), timeout=60), n)
    out["upstream_get"] = _median_ms(lambda i: requests.get(f"{url}/runs/{run_id}/", timeout=60), n)
    with requests.Session() as session:
        out["session_post"] = _median_ms(lambda i: session.post(f"{url}/metrics/", data=form(i), timeout=60), n)
        out["session_get"] = _median_ms(lambda i: session.get(f"{url}/runs/{run_id}/", timeout=60), n)
    with ApiClient(url=address, max_workers=5) as client:
        out["ours_post"] = _median_ms(lambda i: client.post_metric(run_id, "seq @ 0", i).result(), n)
        out["ours_get"] = _median_ms(lambda i: client.get_run(run_id).result(), n)
    return out


def print_latencies(title: str, ms: dict[str, float]) -> None:
    print(f"\n{title}: median ms per request, one at a time (posts/s in brackets)")
    for who, label in (
        ("upstream", "upstream pattern (new connection each)"),
        ("session", "requests.Session kept alive"),
        ("ours", "ApiClient (kept alive, prompt ACKs)"),
    ):
        post, get = ms[f"{who}_post"], ms[f"{who}_get"]
        print(f"  {label:<40} POST {post:7.2f} ({1000 / post:6.0f}/s)   GET {get:7.2f}")
    ratio = ms["upstream_post"] / ms["ours_post"]
    print(f"  ApiClient POST vs upstream: {ratio:.2f}x faster -> {verdict(ratio, 1.0)} (>= 1x)")


def singles(address: str, run_id: int, n: int) -> float:
    with ApiClient(url=address, max_workers=5) as client:
        start = time.perf_counter()
        futures = [client.post_metric(run_id, "loss @ 0", i * 0.5) for i in range(n)]
        assert all(f.result().status_code == 201 for f in futures)
        return n / (time.perf_counter() - start)


def batch(address: str, run_id: int, n: int) -> float:
    with ApiClient(url=address, max_workers=5) as client:
        client.post_metrics(run_id, [Metric("warm", 0)]).result()  # the one-time probe
        start = time.perf_counter()
        metrics = [Metric("loss @ 0", i * 0.5) for i in range(n)]
        result = client.post_metrics(run_id, metrics).result()
        assert result.ok and result.stored == n, result
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per pattern")
    args = parser.parse_args()
    n = args.metrics
    rates: dict[str, list[float]] = {"upstream": [], "single": [], "batch": [], "fanout": [], "upstream_no_ext": []}
    with spawn() as full, spawn(args=["--no-extensions"]) as dashboard_like:
        run_full = create_run(full.url, "bench")
        run_plain = create_run(dashboard_like.url, "bench")
        contenders: list[tuple[str, Callable[[], float]]] = [
            ("upstream", lambda: upstream_rate(full.url, run_full, n)),
            ("single", lambda: singles(full.address, run_full, n)),
            ("batch", lambda: batch(full.address, run_full, n)),
            ("upstream_no_ext", lambda: upstream_rate(dashboard_like.url, run_plain, n)),
            ("fanout", lambda: batch_fanout(dashboard_like.address, run_plain, n)),
        ]
        for _ in range(args.rounds):
            for name, fn in contenders:
                rates[name].append(fn())
        embedded_ms = one_at_a_time(dashboard_like.address, run_plain, args.requests)
    with SegmentedServer() as segmented:
        segmented_ms = one_at_a_time(segmented.address, 1, args.requests)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {
        "single_vs_upstream": med["single"] / med["upstream"],
        "batch_vs_upstream": med["batch"] / med["upstream"],
        "fanout_vs_upstream_same_server": med["fanout"] / med["upstream_no_ext"],
    }
    print(f"{n:,} metrics, median of {args.rounds} interleaved rounds (metrics/s):")
    print(f"  upstream pattern (new connection per call):  {med['upstream']:>10,.0f}")
    print(
        f"  ApiClient.post_metric, pooled keep-alive:    {med['single']:>10,.0f}  = "
        f"{ratios['single_vs_upstream']:.2f}x "
        f"-> {verdict(ratios['single_vs_upstream'], 1.3)} (>= 1.3x)"
    )
    print(
        f"  ApiClient.post_metrics, batch endpoint:      {med['batch']:>10,.0f}  = {ratios['batch_vs_upstream']:.0f}x "
        f"-> {verdict(ratios['batch_vs_upstream'], 50)} (>= 50x)"
    )
    print(f"  upstream pattern, server without batch:      {med['upstream_no_ext']:>10,.0f}")
    print(
        f"  ApiClient.post_metrics, fan-out:             {med['fanout']:>10,.0f}  = "
        f"{ratios['fanout_vs_upstream_same_server']:.2f}x -> "
        f"{verdict(ratios['fanout_vs_upstream_same_server'], 1.0)} (never slower)"
    )
    print_latencies("server answering in several segments (as runserver)", segmented_ms)
    print_latencies("embedded server (serve --no-extensions)", embedded_ms)
    write_results(
        "client_throughput",
        {
            "metrics": n,
            "rounds": args.rounds,
            "rates": rates,
            "median": med,
            "ratios": ratios,
            "one_at_a_time_ms": {"segmented": segmented_ms, "embedded": embedded_ms},
        },
    )


def batch_fanout(address: str, run_id: int, n: int) -> float:
    with ApiClient(url=address, max_workers=5) as client:
        client.post_metrics(run_id, [Metric("warm", 0)]).result()  # the probe finds no batch endpoint
        assert client.batch_supported is False
        start = time.perf_counter()
        result = client.post_metrics(run_id, [Metric("loss @ 0", i * 0.5) for i in range(n)]).result()
        assert result.ok and result.stored == n
        return n / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
