"""What a logging call costs the training thread, against floors measured in the same run.

Baselines (issue 4):

* Floor A: ``list.append((name, value, time.time()))``
* Floor B: ``with lock: deque.append((name, value, time.perf_counter_ns()))``
* upstream: ``executor.submit(requests.post, url, data=..., timeout=180)`` per metric,
  as ``mlbench_core.api.ApiClient.post_metric`` does (5 workers, a connection per call)

Contenders, with their dispatcher delivering to the embedded server in its own process:
``log()``, ``log(step=)``, ``increment()``, a timer's enter plus exit, ``log()`` with
``durable=True``, and ``log()`` with ``delivery="process"`` (an agent process delivers).
Each sample times ``--inner`` calls in a loop (the loop is in every contender alike);
contenders are interleaved sample by sample so the machine's noise hits all of them; the
figure is the median per-call time.

Targets (issue 9): log <= 1.2x Floor B; timer enter+exit <= 4x Floor B; durable log <= 3x
Floor B; log >= 15x cheaper than upstream. Issue 12: log with process delivery <= 3x Floor B.

    python benchmarks/overhead.py [--samples 300] [--inner 200]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import gc
import statistics
import threading
import time
from typing import Any, Callable

import requests

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import spawn

from _common import create_run, verdict, write_results

perf = time.perf_counter_ns


def floor_a(n: int) -> int:
    buf: list[Any] = []
    append = buf.append
    now = time.time
    t0 = perf()
    for _ in range(n):
        append(("loss", 0.5, now()))
    return perf() - t0


_lock = threading.Lock()
_deque: collections.deque[Any] = collections.deque()


def floor_b(n: int) -> int:
    lock = _lock
    append = _deque.append
    now = time.perf_counter_ns
    t0 = perf()
    for _ in range(n):
        with lock:
            append(("loss", 0.5, now()))
    _deque.clear()
    return perf() - t0


def make_log(logger: MetricsLogger) -> Callable[[int], int]:
    def run(n: int) -> int:
        log = logger.log
        t0 = perf()
        for _ in range(n):
            log("loss", 0.5)
        return perf() - t0

    return run


def make_log_step(logger: MetricsLogger) -> Callable[[int], int]:
    def run(n: int) -> int:
        log = logger.log
        t0 = perf()
        for i in range(n):
            log("loss", 0.5, step=i)
        return perf() - t0

    return run


def make_increment(logger: MetricsLogger) -> Callable[[int], int]:
    def run(n: int) -> int:
        inc = logger.increment
        t0 = perf()
        for _ in range(n):
            inc("samples", 32)
        return perf() - t0

    return run


def make_timer(logger: MetricsLogger) -> Callable[[int], int]:
    def run(n: int) -> int:
        timer = logger.timer
        t0 = perf()
        for _ in range(n):
            with timer("fwd_pass"):
                pass
        return perf() - t0

    return run


def make_upstream(url: str, run_id: int) -> tuple[Callable[[int], int], Callable[[], None]]:
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=5)
    endpoint = f"{url}/api/metrics/"
    futures: list[Any] = []

    def run(n: int) -> int:
        submit = executor.submit
        post = requests.post
        t0 = perf()
        for _ in range(n):
            date = datetime.datetime.utcnow()
            futures.append(
                submit(
                    post,
                    endpoint,
                    data={
                        "run_id": run_id,
                        "name": "loss @ 0",
                        "cumulative": False,
                        "date": str(date),
                        "value": str(0.5),
                        "metadata": "",
                    },
                    timeout=180,
                )
            )
        return perf() - t0

    def finish() -> None:
        for f in futures:
            f.result()
        futures.clear()
        executor.shutdown()

    return run, finish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--inner", type=int, default=200)
    parser.add_argument("--upstream-calls", type=int, default=2000)
    args = parser.parse_args()

    with spawn() as server:
        run_id = create_run(server.url, "overhead")
        logger = MetricsLogger(run_id, url=server.address, rank=0, max_buffer=5_000_000)
        contenders: dict[str, Callable[[int], int]] = {
            "floor_a": floor_a,
            "floor_b": floor_b,
            "log": make_log(logger),
            "log_step": make_log_step(logger),
            "increment": make_increment(logger),
            "timer": make_timer(logger),
        }
        durable = MetricsLogger(run_id, url=server.address, rank=1, durable=True, max_buffer=5_000_000)
        contenders["log_durable"] = make_log(durable)
        process = MetricsLogger(run_id, url=server.address, rank=2, delivery="process", max_buffer=5_000_000)
        assert process.flush(60)  # its agent is up
        contenders["log_process"] = make_log(process)
        per_call: dict[str, list[float]] = {k: [] for k in contenders}
        for fn in contenders.values():  # warm up
            fn(args.inner)
        gc.collect()
        for _ in range(args.samples):
            for name, fn in contenders.items():
                per_call[name].append(fn(args.inner) / args.inner)
        assert logger.flush(60), logger.stats
        log_stats = logger.stats
        logger.close()
        durable.flush(60)
        durable.close()
        assert process.flush(120), process.stats
        process.close()

        upstream_run, upstream_finish = make_upstream(server.url, run_id)
        upstream_samples = [upstream_run(100) / 100 for _ in range(args.upstream_calls // 100)]
        upstream_finish()
        per_call["upstream"] = upstream_samples

    med = {k: statistics.median(v) for k, v in per_call.items()}
    fb = med["floor_b"]
    ratios = {f"{k}_vs_floor_b": v / fb for k, v in med.items()}
    ratios["upstream_vs_log"] = med["upstream"] / med["log"]
    print(f"median cost per call in the training thread ({args.samples} samples of {args.inner} calls):")
    for name in per_call:
        print(f"  {name:<12} {med[name]:>9.0f} ns  = {med[name] / fb:6.2f}x Floor B")
    print(
        f"log(): {ratios['log_vs_floor_b']:.2f}x Floor B -> "
        f"{verdict(ratios['log_vs_floor_b'], 1.2, higher_is_better=False)} (<= 1.2x)"
    )
    print(
        f"timer enter+exit: {ratios['timer_vs_floor_b']:.2f}x Floor B -> "
        f"{verdict(ratios['timer_vs_floor_b'], 4.0, higher_is_better=False)} (<= 4x)"
    )
    print(
        f"upstream pattern costs {ratios['upstream_vs_log']:.0f}x log() -> "
        f"{verdict(ratios['upstream_vs_log'], 15)} (>= 15x)"
    )
    print(
        f"durable log(): {ratios['log_durable_vs_floor_b']:.2f}x Floor B -> "
        f"{verdict(ratios['log_durable_vs_floor_b'], 3.0, higher_is_better=False)} (<= 3x)"
    )
    print(
        f"log() with delivery='process': {ratios['log_process_vs_floor_b']:.2f}x Floor B -> "
        f"{verdict(ratios['log_process_vs_floor_b'], 3.0, higher_is_better=False)} (<= 3x)"
    )
    print(f"delivered while measuring: {log_stats.stored:,} stored, {log_stats.dropped_total} dropped")
    write_results(
        "overhead",
        {
            "samples": args.samples,
            "inner": args.inner,
            "median_ns": med,
            "ratios": ratios,
            "stats": {"stored": log_stats.stored, "dropped": log_stats.dropped_total},
        },
    )


if __name__ == "__main__":
    main()
