"""A training loop in the usual PyTorch shape, logging to MLBench, with no torch installed.

The Dataset/DataLoader/model/optimizer below are small stand-ins written in plain Python so
the example runs anywhere; with torch, the logging lines stay exactly the same.

    python examples/train_loop.py                      # starts an embedded server for itself
    python examples/train_loop.py --url 127.0.0.1:8080 # or logs to a running one
    (as a run's command under `mlbench-metrics serve --exec`, to that server and run)
"""

from __future__ import annotations

import argparse
import math
import os
import random
from typing import Iterator

import mlbench_metrics
from mlbench_metrics import SystemMetrics


class Dataset:
    """y = 3x - 1 plus noise."""

    def __init__(self, n: int, rng: random.Random) -> None:
        self.items = [(x, 3 * x - 1 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(n))]

    def __len__(self) -> int:
        return len(self.items)


class DataLoader:
    def __init__(self, dataset: Dataset, batch_size: int, rng: random.Random) -> None:
        self.dataset, self.batch_size, self.rng = dataset, batch_size, rng

    def __iter__(self) -> Iterator[list[tuple[float, float]]]:
        items = list(self.dataset.items)
        self.rng.shuffle(items)
        for i in range(0, len(items), self.batch_size):
            yield items[i : i + self.batch_size]


class Linear:
    """A one-feature linear model with hand-written gradients (what autograd would give)."""

    def __init__(self) -> None:
        self.w, self.b = 0.0, 0.0
        self.grad_w, self.grad_b = 0.0, 0.0

    def __call__(self, batch: list[tuple[float, float]]) -> list[float]:
        return [self.w * x + self.b for x, _ in batch]


def mse(model: Linear, batch: list[tuple[float, float]], predictions: list[float]) -> float:
    errors = [p - y for p, (_, y) in zip(predictions, batch)]
    model.grad_w = 2 * sum(e * x for e, (x, _) in zip(errors, batch)) / len(batch)  # "loss.backward()"
    model.grad_b = 2 * sum(errors) / len(batch)
    return sum(e * e for e in errors) / len(batch)


class SGD:
    def __init__(self, model: Linear, lr: float) -> None:
        self.model, self.lr = model, lr

    def step(self) -> None:
        self.model.w -= self.lr * self.model.grad_w
        self.model.b -= self.lr * self.model.grad_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start an embedded one)")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    # Run by `mlbench-metrics serve --exec`, the server and the run come in the environment.
    url = args.url or os.environ.get("MLBENCH_METRICS_URL")
    server = None
    if url is None:
        from mlbench_metrics.server import serve

        server = serve()  # 127.0.0.1, a free port, a temporary database
        url = server.address
    rng = random.Random(0)
    loader = DataLoader(Dataset(4096, rng), batch_size=64, rng=rng)
    model = Linear()
    optimizer = SGD(model, lr=0.1)

    # A run of its own, marked finished at the end (failed on an uncaught exception); under
    # serve --exec, the run it was started for (MLBENCH_METRICS_RUN_ID wins over new_run).
    log = mlbench_metrics.init(new_run="example-train-loop", url=url, rank=0)
    SystemMetrics(log, interval=1.0)  # CPU, memory, network, disk; stopped with the logger

    @log.timed("comp_metrics")
    def evaluate() -> float:
        return math.sqrt(sum((model.w * x + model.b - y) ** 2 for x, y in loader.dataset.items) / len(loader.dataset))

    step = 0
    for epoch in range(args.epochs):
        log.epoch = epoch  # goes into every record's metadata
        with log.timer("epoch_time"):
            for batch in loader:
                with log.timer("fwd_pass"):
                    predictions = model(batch)
                with log.timer("comp_loss"):
                    loss = mse(model, batch, predictions)
                with log.timer("opt_step"):
                    optimizer.step()
                log.log("train_loss", loss, step=step)
                log.increment("samples", len(batch))  # cumulative: the dashboard draws it as a rate
                step += 1
        log.log("val_rmse", evaluate())
        print(f"epoch {epoch}: loss {loss:.4f}  w={model.w:.3f} b={model.b:.3f}")

    run_id = log.run_id
    mlbench_metrics.finish()  # delivers everything, marks the run finished
    print(f"run {run_id}: {log.stats.stored} metrics stored")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main()
