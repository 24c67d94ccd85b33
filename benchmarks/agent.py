"""Process delivery against thread delivery, measured side by side in one run (issue 12).

1. **Paced**: a training step of ~1 ms of GIL-holding Python work with 10 ``log()``
   calls. One logger of each mode is open at once, and two that deliver nothing while
   the blocks run (``log()`` alone, plain and durable: the floors); quads of blocks
   (plain, logging, logging, plain) go round them in ABBA order, so the machine's drift
   hits all alike; each one's figure is the median slowdown over pairs of adjacent
   blocks, with the quartiles as its range, in wall time and in this process's CPU time.
   Target: process delivery at most 0.5% slower than no logging (the cost of ``log()``).
2. **Burst**: 1,000,000 metrics logged as fast as the loop can, until ``flush()`` says the
   server stored them all, for each mode (ABBA). Target: >= 150,000 metrics/s.
3. **Agent start**: from the logger's constructor to the agent's first report in the
   status area, and the agent's RSS then and at its peak (after the bursts); beside it,
   ``python -c pass`` and ``python -c "import mlbench_metrics"`` on this machine.

The embedded server runs in its own process. On a 2-core machine it shares the second
core with the agent (and, with thread delivery, with nothing but the dispatcher's
requests); ``--server-nice N`` lowers its priority, as if it ran elsewhere.

    python benchmarks/agent.py [--paced-seconds 60] [--metrics 1000000] [--server-nice 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import spawn
from mlbench_metrics.server.store import Store
from mlbench_metrics.spool.durable.status import StatusArea
from throughput import NAMES, burst, calibrate_work, work

from _common import create_run, proc_mib, verdict, write_results

MODES = ("thread", "process")


def quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


# The paced contenders: the two modes, and two floors that deliver nothing while the
# blocks run (a batch of 10^6 records and an hour's interval: their dispatcher sleeps), so
# what each block costs is log() alone, plain or durable. Process delivery's own floor is
# the durable log(): its log() is that, and nothing else runs in its process.
CONTENDERS: dict[str, dict[str, Any]] = {
    "thread": {"delivery": "thread"},
    "process": {"delivery": "process"},
    "log_alone": {"batch_size": 100_000, "flush_interval": 3600.0, "max_buffer": 10_000_000},
    "durable_log_alone": {"durable": True, "batch_size": 100_000, "flush_interval": 3600.0, "max_buffer": 10_000_000},
}


def paced_side_by_side(address: str, url: str, seconds: float, spool: str, block_steps: int = 100) -> dict[str, Any]:
    """Slowdown of each contender against the plain blocks next to it, contenders in
    ABBA order (A B C D D C B A ...).

    Three figures per block: wall time (what training feels, and what the machine's other
    load disturbs most), this process's CPU time (``time.process_time``: the training
    thread's and, in thread mode, the dispatcher's; in process mode the agent's is not in
    it), and the training thread's own CPU time (``time.thread_time``: ``log()`` and what
    it does to the caches; time spent waiting for the GIL or for a core is not in it).
    """
    k = calibrate_work()
    loggers = {
        name: MetricsLogger(
            create_run(url, f"paced-{name.replace('_', '-')}"), url=address, rank=0, spool_dir=spool, **args
        )
        for name, args in CONTENDERS.items()
    }
    assert loggers["process"].flush(60)  # the agent is up before the clock starts
    wall: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    cpu: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    own: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    plain_rates: list[float] = []
    step = 0
    order = [*CONTENDERS, *reversed(CONTENDERS)]
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for name in order:
            log = loggers[name].log
            quad = []
            for logging_on in (False, True, True, False):
                t0, c0, o0 = time.perf_counter(), time.process_time(), time.thread_time()
                if logging_on:
                    for _ in range(block_steps):
                        work(k)
                        for metric in NAMES:
                            log(metric, 0.5, step=step)
                        step += 1
                else:
                    for _ in range(block_steps):
                        work(k)
                quad.append((time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - o0))
            for plain, logged in ((quad[0], quad[1]), (quad[3], quad[2])):
                wall[name].append(logged[0] / plain[0] - 1)
                cpu[name].append(logged[1] / plain[1] - 1)
                own[name].append(logged[2] / plain[2] - 1)
            plain_rates += [block_steps / quad[0][0], block_steps / quad[3][0]]
    out: dict[str, Any] = {"work_iterations_per_step": k, "block_steps": block_steps}
    for name, logger in loggers.items():
        assert logger.flush(300), logger.stats
        stats = logger.stats
        logger.close()
        out[name] = {
            "slowdown": statistics.median(wall[name]),
            "slowdown_quartiles": list(quartiles(wall[name])),
            "cpu_overhead": statistics.median(cpu[name]),
            "cpu_overhead_quartiles": list(quartiles(cpu[name])),
            "thread_cpu_overhead": statistics.median(own[name]),
            "thread_cpu_overhead_quartiles": list(quartiles(own[name])),
            "pairs": len(wall[name]),
            "stored": stats.stored,
            "dropped": stats.dropped_total,
        }
    out["steps_per_s_without"] = statistics.median(plain_rates)
    return out


def agent_start(address: str, url: str, spool: str, samples: int) -> dict[str, Any]:
    """Seconds from the constructor to the agent's first report; its RSS then."""
    starts, rss = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        logger = MetricsLogger(create_run(url, "start"), url=address, delivery="process", spool_dir=spool)
        assert logger.spool_dir is not None
        status = StatusArea(logger.spool_dir / "status.bin")
        while status.read().generation < 1:
            time.sleep(0.001)
        starts.append(time.perf_counter() - t0)
        pid = status.read().pid
        rss.append(proc_mib(pid))
        status.close()
        logger.close()
    return {
        "seconds_median": statistics.median(starts),
        "seconds_range": [min(starts), max(starts)],
        "rss_mib_median": statistics.median(rss),
        "rss_mib_range": [min(rss), max(rss)],
    }


def interpreter_start(samples: int) -> dict[str, float]:
    """``python -c pass`` and ``python -c "import mlbench_metrics"``, for comparison."""
    out = {}
    for label, code in (("python_pass", "pass"), ("import_mlbench_metrics", "import mlbench_metrics.agent.core")):
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - t0)
        out[label] = statistics.median(times)
    return out


def bursts(address: str, url: str, n: int, spool: str, db_path: str) -> dict[str, Any]:
    """Each mode's burst, ABBA; the agent's peak RSS in the process bursts."""
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for mode in ("thread", "process", "process", "thread"):
        run = create_run(url, f"burst-{mode}")
        results[mode].append(burst(address, run, n, delivery=mode, spool_dir=spool))
        store = Store(db_path)
        held = store.count_metrics(run)
        store.close()
        assert held == n, (mode, held, n)
    figures: dict[str, Any] = {
        mode: {key: [r[key] for r in rs] for key in ("metrics_per_s", "all_stored_seconds", "log_loop_seconds")}
        for mode, rs in results.items()
    }
    figures["agent_peak_rss_mib"] = max(r.get("agent_peak_rss_mib", 0.0) for r in results["process"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paced-seconds", type=float, default=60.0)
    parser.add_argument("--metrics", type=int, default=1_000_000, help="per burst (0: no bursts)")
    parser.add_argument("--start-samples", type=int, default=5)
    parser.add_argument("--server-nice", type=int, default=0)
    args = parser.parse_args()

    spool = tempfile.mkdtemp(prefix="mlbench-agent-bench-")
    interp = interpreter_start(args.start_samples)
    with spawn() as server:
        if args.server_nice and server.pid is not None:
            os.setpriority(os.PRIO_PROCESS, server.pid, args.server_nice)
        start = agent_start(server.address, server.url, spool, args.start_samples)
        burst_figures = bursts(server.address, server.url, args.metrics, spool, server.db_path) if args.metrics else {}
        pace = paced_side_by_side(server.address, server.url, args.paced_seconds, spool)

    print(
        f"agent start: {start['seconds_median'] * 1000:.0f} ms median "
        f"({start['seconds_range'][0] * 1000:.0f}-{start['seconds_range'][1] * 1000:.0f} ms); "
        f"python -c pass {interp['python_pass'] * 1000:.0f} ms, importing the agent "
        f"{interp['import_mlbench_metrics'] * 1000:.0f} ms"
    )
    peak = (
        f", peak {burst_figures['agent_peak_rss_mib']:.0f} MiB in {args.metrics:,}-metric bursts"
        if args.metrics
        else ""
    )
    print(
        f"agent RSS: {start['rss_mib_median']:.0f} MiB when ready "
        f"({start['rss_mib_range'][0]:.0f}-{start['rss_mib_range'][1]:.0f}){peak}"
    )
    for mode in MODES if args.metrics else ():
        rates = burst_figures[mode]["metrics_per_s"]
        print(
            f"burst ({mode}): {min(rates):,.0f}-{max(rates):,.0f} metrics/s stored end to end -> "
            f"{verdict(min(rates), 150_000)} (>= 150,000/s)"
        )
    print(
        f"paced: {pace['steps_per_s_without']:.0f} steps/s without logging "
        f"(server nice {args.server_nice}, {pace['thread']['pairs']} pairs each)"
    )
    for name in CONTENDERS:
        fig = pace[name]
        low, high = fig["slowdown_quartiles"]
        clow, chigh = fig["cpu_overhead_quartiles"]
        tlow, thigh = fig["thread_cpu_overhead_quartiles"]
        target = f" -> {verdict(fig['slowdown'], 0.005, higher_is_better=False)} (<= 0.5%)" if name == "process" else ""
        print(
            f"       {name}: slowdown {fig['slowdown'] * 100:.2f}% (quartiles {low * 100:.2f}% to "
            f"{high * 100:.2f}%){target}; CPU of the training process +{fig['cpu_overhead'] * 100:.2f}% "
            f"({clow * 100:.2f}% to {chigh * 100:.2f}%); training thread +{fig['thread_cpu_overhead'] * 100:.2f}% "
            f"({tlow * 100:.2f}% to {thigh * 100:.2f}%)"
        )
    write_results(
        "agent",
        {
            "start": start,
            "interpreter": interp,
            "bursts": burst_figures,
            "paced": pace,
            "server_nice": args.server_nice,
        },
    )


if __name__ == "__main__":
    main()
