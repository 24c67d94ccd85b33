"""Several ranks logging to one run, through multiprocessing (as torch.distributed would).

Rank 0's parent creates the run; each worker process logs under its rank, so names become
``"<name> @ <rank>"`` as mlbench's own benchmarks name them.

    python examples/multi_rank.py [--ranks 4] [--url 127.0.0.1:8080]
    (as a run's command under `mlbench-metrics serve --exec`, to that server and run)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random

from mlbench_metrics import MetricsLogger, Run


def worker(rank: int, run_id: int, url: str, steps: int) -> None:
    rng = random.Random(rank)
    loss = 2.0
    with MetricsLogger(run_id, url=url, rank=rank) as log:  # closed (and flushed) at the end
        for step in range(steps):
            with log.timer("fwd_pass"):
                loss *= 0.99 + rng.uniform(-0.005, 0.005)
            log.log("train_loss", loss, step=step)
            log.increment("samples", 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start an embedded one)")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()

    # Run by `mlbench-metrics serve --exec`, the server and the run come in the environment.
    url = args.url or os.environ.get("MLBENCH_METRICS_URL")
    server = None
    if url is None:
        from mlbench_metrics.server import serve

        server = serve()
        url = server.address
    given = os.environ.get("MLBENCH_METRICS_RUN_ID")
    run = (
        Run.get(int(given), url=url)
        if given
        else Run.create(
            "example-multi-rank",
            args.ranks,
            custom_image_name="local",
            custom_image_command="python examples/multi_rank.py",
            backend="gloo",
            url=url,
        )
    )
    processes = [
        multiprocessing.Process(target=worker, args=(rank, run.id, url, args.steps)) for rank in range(args.ranks)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if given and failed:
        raise SystemExit(f"ranks failed: exit codes {failed}")  # serve --exec marks its run by our exit
    if not given:
        run.mark_failed() if failed else run.mark_finished()
    metrics = run.metrics()
    for name in sorted(n for n in metrics if n.startswith("train_loss")):
        print(f"{name}: {len(metrics[name])} points, last {metrics[name][-1][1]:.4f}")
    print(f"run {run.id} {run.refresh().state}")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
