"""End to end, and what a paced training loop feels, with the server in its own process.

1. **Burst**: 1,000,000 metrics logged as fast as the loop can; the clock runs from the
   first ``log()`` until ``flush()`` says the server stored them all. Beside it, in the
   same run, the upstream pattern (``executor.submit(requests.post, ...)``, 5 workers)
   on 2,000 metrics. Peak RSS of this process is reported.
   Targets (issue 4): all stored within 8 s, >= 150,000 metrics/s, > 200x upstream.

2. **Paced**: a training step of ~1 ms of GIL-holding Python work with 10 ``log()``
   calls, while the dispatcher delivers; blocks with and without logging alternate, and
   the step rates are compared. Target: at most 3% slower with logging.

wandb (offline) and MLflow (SQLite in a temporary directory), when installed, are measured
as further paced baselines; one that is missing or fails is reported as such.

    python benchmarks/throughput.py [--metrics 1000000] [--paced-seconds 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from typing import Any, Callable

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import spawn
from mlbench_metrics.server.store import Store

from _common import create_run, proc_mib, upstream_rate, verdict, write_results

NAMES = [f"metric_{i}" for i in range(10)]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def burst(address: str, run_id: int, n: int, **logger_args: Any) -> dict[str, Any]:
    rss_before = peak_rss_mib()
    logger = MetricsLogger(run_id, url=address, rank=0, max_buffer=2 * n, **logger_args)
    log = logger.log
    names = NAMES
    start = time.perf_counter()
    for i in range(n):
        log(names[i % 10], i * 0.001)
    logged = time.perf_counter() - start
    ok = logger.flush(120)
    stored_at = time.perf_counter() - start
    stats = logger.stats
    agent = logger.agent_pid
    agent_rss = proc_mib(agent, "VmHWM") if agent is not None else None
    logger.close()
    return {
        "delivery": logger.delivery,
        "agent_peak_rss_mib": agent_rss,
        "metrics": n,
        "log_loop_seconds": logged,
        "all_stored_seconds": stored_at,
        "metrics_per_s": n / stored_at,
        "flush_ok": ok,
        "stored": stats.stored,
        "dropped": stats.dropped_total,
        "peak_rss_mib_before": rss_before,
        "peak_rss_mib_after": peak_rss_mib(),
    }


def calibrate_work(target_s: float = 0.001) -> int:
    """How many loop iterations of plain Python make ``target_s`` of GIL-holding work.

    The fastest of several timings counts: on a shared machine a slow one is another
    process's doing, and calibrating on it would make every step shorter than meant."""
    k = 1000
    while True:
        took = min(_timed(work, k) for _ in range(5))
        if took > 0.02:
            return max(1, int(k * target_s / took))
        k *= 2


def _timed(fn: Callable[[int], int], k: int) -> float:
    t0 = time.perf_counter()
    fn(k)
    return time.perf_counter() - t0


def work(k: int) -> int:
    total = 0
    for i in range(k):
        total += i * i % 7
    return total


def paced(address: str, run_id: int, seconds: float, block_steps: int = 100) -> dict[str, Any]:
    """Step rate with and without logging, in adjacent blocks.

    Blocks run in ABBA order (plain, logging, logging, plain, ...) so that a drift of the
    machine's speed hits both alike, and the figure is the median over pairs of adjacent
    blocks: the shared machine's noise moves both members of a pair together.
    """
    k = calibrate_work()
    logger = MetricsLogger(run_id, url=address, rank=0)
    log = logger.log
    names = NAMES
    rates: dict[bool, list[float]] = {False: [], True: []}
    pair_slowdowns: list[float] = []
    step = 0
    deadline = time.perf_counter() + seconds
    order = (False, True, True, False)
    while time.perf_counter() < deadline:
        quad = []
        for logging_on in order:
            t0 = time.perf_counter()
            if logging_on:
                for _ in range(block_steps):
                    work(k)
                    for name in names:
                        log(name, 0.5, step=step)
                    step += 1
            else:
                for _ in range(block_steps):
                    work(k)
            rate = block_steps / (time.perf_counter() - t0)
            rates[logging_on].append(rate)
            quad.append(rate)
        pair_slowdowns += [1 - quad[1] / quad[0], 1 - quad[2] / quad[3]]
    assert logger.flush(60)
    stats = logger.stats
    logger.close()
    return {
        "work_iterations_per_step": k,
        "block_steps": block_steps,
        "steps_per_s_without": statistics.median(rates[False]),
        "steps_per_s_with": statistics.median(rates[True]),
        "slowdown": statistics.median(pair_slowdowns),
        "slowdown_of_medians": 1 - statistics.median(rates[True]) / statistics.median(rates[False]),
        "pairs": len(pair_slowdowns),
        "records": stats.stored,
        "dropped": stats.dropped_total,
    }


PeerLogger = tuple[Callable[[str, float, int], None], Callable[[], None]]
"""A peer's ``log(name, value, step)`` and its ``finish()``."""


def _wandb(tmp: str) -> PeerLogger:
    import wandb  # type: ignore[import-not-found]

    run = wandb.init(mode="offline", project="mlbench-metrics-bench", dir=tmp)
    return (lambda name, value, step: run.log({name: value}, step=step)), run.finish


def _mlflow(tmp: str) -> PeerLogger:
    import mlflow  # type: ignore[import-not-found]

    # MLflow 3 refuses its file store unless told; its SQLite backend is the local store.
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    mlflow.start_run()
    return (lambda name, value, step: mlflow.log_metric(name, value, step=step)), mlflow.end_run


PEERS: dict[str, Callable[[str], PeerLogger]] = {"wandb_offline": _wandb, "mlflow_sqlite": _mlflow}


def third_party_baselines(seconds: float, block_steps: int = 100) -> dict[str, Any]:
    """Paced slowdown with wandb (offline) and MLflow (SQLite in a temporary directory),
    when installed: plain and logging blocks in ABBA order, as :func:`paced`. A baseline
    that is not installed, or fails, is reported (with why) and the others go on."""
    results: dict[str, Any] = {}
    k = calibrate_work()
    for label, make in PEERS.items():
        with tempfile.TemporaryDirectory(prefix=f"mlbench-{label}-") as tmp:
            try:
                log, finish = make(tmp)
            except ImportError as exc:
                results[label] = {"error": f"not installed ({exc})"}
                continue
            except Exception as exc:  # a peer that cannot start is a finding, not the end of the run
                results[label] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            pairs: list[float] = []
            step = 0
            try:
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    quad = []
                    for logging_on in (False, True, True, False):
                        t0 = time.perf_counter()
                        for _ in range(block_steps):
                            work(k)
                            if logging_on:
                                for name in NAMES:
                                    log(name, 0.5, step)
                                step += 1
                        quad.append(block_steps / (time.perf_counter() - t0))
                    pairs += [1 - quad[1] / quad[0], 1 - quad[2] / quad[3]]
                finish()
            except Exception as exc:
                results[label] = {"error": f"{type(exc).__name__}: {exc}", "pairs": len(pairs)}
                continue
            results[label] = {"slowdown": statistics.median(pairs), "pairs": len(pairs)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=int, default=1_000_000)
    parser.add_argument("--upstream", type=int, default=2000)
    parser.add_argument("--paced-seconds", type=float, default=20.0)
    args = parser.parse_args()

    with spawn() as server:
        run_burst = create_run(server.url, "burst")
        run_up = create_run(server.url, "upstream")
        run_paced = create_run(server.url, "paced")
        up = upstream_rate(server.url, run_up, args.upstream)
        result = burst(server.address, run_burst, args.metrics)
        pace = paced(server.address, run_paced, args.paced_seconds)
        store = Store(server.db_path)
        stored_on_server = store.count_metrics(run_burst)
        store.close()
    others = third_party_baselines(args.paced_seconds / 2)

    ratio = result["metrics_per_s"] / up
    print(
        f"burst: {args.metrics:,} metrics logged in {result['log_loop_seconds']:.2f} s, all stored after "
        f"{result['all_stored_seconds']:.2f} s -> {verdict(result['all_stored_seconds'], 8.0, higher_is_better=False)} "
        f"(<= 8 s)"
    )
    print(
        f"       {result['metrics_per_s']:,.0f} metrics/s -> {verdict(result['metrics_per_s'], 150_000)} "
        f"(>= 150,000/s); "
        f"upstream pattern {up:,.0f}/s, ratio {ratio:.0f}x -> {verdict(ratio, 200)} (> 200x)"
    )
    print(
        f"       server holds {stored_on_server:,}; peak RSS of this process {result['peak_rss_mib_after']:.0f} MiB "
        f"(before the burst {result['peak_rss_mib_before']:.0f} MiB)"
    )
    print(
        f"paced: {pace['steps_per_s_without']:.0f} steps/s without logging, {pace['steps_per_s_with']:.0f} with "
        f"10 log() per step: slowdown {pace['slowdown'] * 100:.2f}% -> "
        f"{verdict(pace['slowdown'], 0.03, higher_is_better=False)} (<= 3%)"
    )
    for label, fig in others.items():
        if "error" in fig:
            print(f"       {label}: FAILED: {fig['error']}")
        else:
            print(f"       {label}: slowdown {fig['slowdown'] * 100:.1f}% (same loop, {fig['pairs']} pairs)")
    write_results(
        "throughput",
        {
            "burst": result,
            "upstream_metrics_per_s": up,
            "burst_vs_upstream": ratio,
            "stored_on_server": stored_on_server,
            "paced": pace,
            "third_party": others,
            "pid": os.getpid(),
        },
    )
    assert stored_on_server == args.metrics, (stored_on_server, args.metrics)


if __name__ == "__main__":
    main()
