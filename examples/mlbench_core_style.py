"""A benchmark script written for mlbench_core, switched to mlbench-metrics by one import.

The dashboard starts it once per rank, as it starts MLBench's benchmark images::

    python examples/mlbench_core_style.py --run_id 7 --rank 0 --hosts 10.0.0.1,10.0.0.2 --backend gloo

It trains a pretend model with mlbench_core's ``Tracker`` (the batch phases, the epoch
stats, the goal) and ``LogMetrics``, and logs the usual per-step timings. The only
change from the mlbench_core version is the import line below: metrics go to
``$MLBENCH_METRICS_URL`` (or the dashboard found in the cluster), batched, retried, and
spooled when the server cannot keep up. Rank 0 records ``TaskResult`` when the goal is
reached, in the last epoch.

Without ``--run_id`` it plays the dashboard: it starts an embedded server that runs
commands (``serve --exec``), creates a 2-rank run of this script and prints what was
stored::

    python examples/mlbench_core_style.py
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from typing import Any, Callable

from mlbench_metrics.compat import LogMetrics, Tracker  # was: from mlbench_core.utils import LogMetrics, Tracker

PHASES = ["batch_load", "init", "fwd_pass", "comp_loss", "backprop", "agg", "opt_step", "comp_metrics"]
METRICS_PER_BATCH = 2 + len(PHASES)  # loss and accuracy, and each phase's time


class TopKAccuracy:
    """What a Tracker needs of mlbench_core's metric objects: a name."""

    def __init__(self, topk: int) -> None:
        self.name = f"Prec@{topk}"


def time_to_accuracy_goal(threshold: int) -> Callable[[str, float, Tracker], str | None]:
    """mlbench_core's goal shape: the result text once validation accuracy reaches ``threshold``."""

    def goal(metric_name: str, value: float, tracker: Tracker) -> str | None:
        if metric_name != "val_global_Prec@1" or value < threshold:
            return None
        return (
            f"{threshold:02d}% Top 1 Validation Accuracy reached in {tracker.get_total_train_time():.3f} seconds, "
            f"Compute: {tracker.get_total_compute_time()} seconds, "
            f"Communication: {tracker.get_total_communication_time()} seconds"
        )

    return goal


def train(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.rank)
    metric = TopKAccuracy(1)
    tracker = Tracker([metric], args.run_id, args.rank, goal=time_to_accuracy_goal(70))
    tracker.start()
    step_seconds = METRICS_PER_BATCH / args.rate if args.rate > 0 else 0.0
    next_step = time.monotonic()
    loss = 2.5
    for epoch in range(args.epochs):
        tracker.train()
        for _ in range(args.batches):
            tracker.batch_start()
            for phase in PHASES:  # the model's work would go between these marks
                tracker.record_batch_step(phase)
            tracker.batch_end()
            loss *= 0.999 + rng.uniform(-0.0005, 0.0005)
            tracker.record_loss(loss, 32, log_to_api=True)
            tracker.record_metric(metric, 100 - 40 * loss / 2.5, 32, log_to_api=True)
            marks = tracker.batch_times
            for (_, t0), (phase, t1) in zip(marks[:-1], marks[1:]):
                if phase != "end":
                    LogMetrics.log(args.run_id, args.rank, tracker.current_epoch, f"batch_{phase}", t1 - t0)
            next_step += step_seconds
            pause = next_step - time.monotonic()
            if pause > 0:  # the rest of the step is the GPU's
                time.sleep(pause)
        tracker.validation()
        tracker.validation_start()
        accuracy = 70.0 * (epoch + 1) / args.epochs  # reaches the goal in the last epoch
        tracker.record_loss(loss * 1.1, log_to_api=True)
        tracker.record_metric(metric, accuracy, log_to_api=True)
        tracker.record_stat("global_Prec@1", accuracy, log_to_api=True)
        tracker.validation_end()
        tracker.epoch_end()
        print(f"rank {args.rank} epoch {epoch}: {tracker}", flush=True)
    return {"rank": args.rank, "goal_reached": tracker.goal_reached, "done_at": time.time()}


def report(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    """What a benchmark measures: records logged, and how long closing took."""
    logger = LogMetrics.logger(args.run_id, args.rank)
    if logger is None:
        return
    summary["shutdown_timeout"] = logger.shutdown_timeout
    started = time.monotonic()
    summary["not_delivered"] = LogMetrics.close()
    summary["close_seconds"] = time.monotonic() - started
    stats = logger.stats
    summary.update(
        logged=stats.logged,
        stored=stats.stored,
        spooled=stats.spooled,
        dropped=dict(stats.dropped),
        folded=stats.folded,
        aggregates=stats.aggregates,
    )
    print(json.dumps(summary), flush=True)


def play_the_dashboard() -> int:
    """Start an embedded server that runs runs, run this script on 2 ranks, show what was stored."""
    from mlbench_metrics import Run
    from mlbench_metrics.server import serve

    command = f"{sys.executable} {__file__} --run_id {{run_id}} --rank {{rank}} --hosts {{hosts}} --backend {{backend}}"
    with serve(exec_runs=True) as server:
        run = Run.create(
            "mlbench-core-style",
            2,
            custom_image_name="local",
            custom_image_command=command,
            custom_backend="gloo",
            run_all_nodes=True,
            url=server.address,
            token=server.token,  # --exec always has one; the runs it starts get it too
        )
        run.wait(timeout=120, poll=0.2)
        for line in run.job_metadata.get("stdout", [])[-4:]:
            print(line)
        metrics = run.metrics()
        print(f"run {run.id} {run.state}: {sum(len(p) for p in metrics.values())} metrics in {len(metrics)} series")
        print("TaskResult @ 0:", metrics.get("TaskResult @ 0", [(None, "missing")])[-1][1])
        return 0 if run.state == "finished" else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_id", help="the run's id (as the dashboard passes it); none: play the dashboard")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--hosts", default="127.0.0.1")
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batches", type=int, default=20, help="batches per epoch")
    parser.add_argument("--rate", type=float, default=0.0, help="metrics a second at most (0: as fast as it goes)")
    parser.add_argument("--report", action="store_true", help="close explicitly and print the logger's figures")
    args = parser.parse_args()
    if args.run_id is None:
        return play_the_dashboard()
    if not math.isfinite(args.rate) or args.rate < 0:
        parser.error("--rate must be a non-negative number")
    summary = train(args)
    if args.report:
        report(args, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
