"""What the Lightning integration costs a training step, against the same Trainer without it.

A small CPU model (an MLP on 32 features, batches of 32) trains with ``self.log`` of the
loss on every step and ``log_every_n_steps=1`` (``--every``; 1 is the worst case:
Lightning's default hands loggers one step in 50). Blocks of ``--steps`` steps run as A B B A, repeated ``--rounds``
times, in one process:

* A: ``Trainer(logger=False)``: ``self.log`` still accumulates, nothing is handed on;
* B: ``Trainer(logger=MLBenchLogger(...))``, delivering to the embedded server running in
  its own process; the logger's dispatcher thread shares this process (its GIL time counts).

A step's time is the time between two ``on_train_batch_start`` calls, so it includes the
hand-over to the loggers after the step; each block's figure is the mean over its steps
after ``--warmup``, in wall time and in this process's CPU time (all its threads: the
dispatcher's work counts; other processes on a shared machine count far less than in
wall time). The figures are B / A over the blocks' means (and each round's ratio, to
show the noise), and the training thread's CPU time inside ``log_metrics`` per call.
With ``--csv`` Lightning's own CSVLogger runs as a third contender (C, in A B C C B A),
for reference. Target (issue 17): at most 1.01.

    python benchmarks/frameworks.py [--rounds 6] [--steps 300] [--warmup 30] [--csv]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from mlbench_metrics.integrations.lightning import MLBenchLogger
from mlbench_metrics.server import spawn

from _common import verdict, write_results

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")


class MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StepClock(pl.Callback):
    """Stamps each batch's start (wall clock and this process's CPU time, all threads)."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def mean_step(self, warmup: int) -> tuple[float, float]:
        """Mean (wall, CPU) seconds from one batch's start to the next."""
        first, last = self.stamps[warmup], self.stamps[-1]
        n = len(self.stamps) - 1 - warmup
        return (last[0] - first[0]) / n, (last[1] - first[1]) / n


class TimedMLBenchLogger(MLBenchLogger):
    """MLBenchLogger, with the training thread's CPU time in its ``log_metrics`` added up."""

    spent = 0.0
    calls = 0

    def log_metrics(self, metrics: Any, step: Any = None) -> None:
        start = time.thread_time()
        super().log_metrics(metrics, step)
        TimedMLBenchLogger.spent += time.thread_time() - start
        TimedMLBenchLogger.calls += 1


def block(
    steps: int, warmup: int, loader: DataLoader[Any], logger: Callable[[], Any], root: str, every: int = 1
) -> tuple[float, float]:
    """Mean (wall, CPU) seconds per step of one ``fit`` of ``steps`` steps."""
    torch.manual_seed(0)
    clock = StepClock()
    trainer = pl.Trainer(
        max_steps=steps,
        logger=logger(),
        log_every_n_steps=every,
        callbacks=[clock],
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(MLP(), loader)
    return clock.mean_step(warmup)


def delivered_cost(address: str, calls: int) -> tuple[float, float]:
    """CPU seconds per ``log_metrics`` of a step's metrics, until stored: (all threads, training thread).

    CPU time, not wall time: what this process spends (the training thread's call and the
    dispatcher's encoding and sending), unmoved by other processes on a shared machine.
    """
    logger = MLBenchLogger(new_run="bench-lightning-calls", url=address)
    logger.experiment.flush(60)
    metrics = {"train_loss": 0.25, "epoch": 0.0}
    process, thread = time.process_time(), time.thread_time()
    for step in range(calls):
        logger.log_metrics(metrics, step)
    thread = time.thread_time() - thread
    assert logger.experiment.flush(120)
    process = time.process_time() - process
    logger.finalize("success")
    return process / calls, thread / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--csv", action="store_true", help="also Lightning's CSVLogger, for reference")
    parser.add_argument("--every", type=int, default=1, help="log_every_n_steps (Lightning's default: 50)")
    parser.add_argument("--calls", type=int, default=50_000, help="log_metrics calls timed alone, in CPU time")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a steady CPU model on a shared machine

    x = torch.randn(args.steps * 32, 32, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=32)
    with spawn() as server, tempfile.TemporaryDirectory() as root:
        per_call, per_call_thread = delivered_cost(server.address, args.calls)
        contenders: dict[str, Callable[[], Any]] = {
            "without": lambda: False,
            "mlbench": lambda: TimedMLBenchLogger(new_run="bench-lightning", url=server.address),
        }
        if args.csv:
            contenders["csv"] = lambda: pl.loggers.CSVLogger(root, name="csv")
        order = list(contenders) + list(reversed(contenders))  # A B (C C) B A
        block(args.steps, args.warmup, loader, contenders["mlbench"], root)  # warm up: imports, first run
        block(args.steps, args.warmup, loader, contenders["without"], root)
        TimedMLBenchLogger.spent, TimedMLBenchLogger.calls = 0.0, 0
        wall: dict[str, list[float]] = {name: [] for name in contenders}
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(args.rounds):
            for name in order:
                w, c = block(args.steps, args.warmup, loader, contenders[name], root, args.every)
                wall[name].append(w)
                cpu[name].append(c)
            print(
                f"round {r + 1} (wall, CPU us/step): "
                + "  ".join(
                    f"{n} {statistics.fmean(wall[n][-2:]) * 1e6:.0f}, {statistics.fmean(cpu[n][-2:]) * 1e6:.0f}"
                    for n in contenders
                )
            )

    figures: dict[str, Any] = {"settings": vars(args), "target": 1.01}
    print(f"\nLightning step, mean of {args.rounds * 2} blocks of {args.steps - args.warmup} steps each:")
    for kind, means in (("wall", wall), ("cpu", cpu)):
        mean = {name: statistics.fmean(v) for name, v in means.items()}
        ratio = mean["mlbench"] / mean["without"]
        per_round = [
            statistics.fmean(means["mlbench"][2 * i : 2 * i + 2])
            / statistics.fmean(means["without"][2 * i : 2 * i + 2])
            for i in range(args.rounds)
        ]
        print(f"{kind} time:")
        for name, value in mean.items():
            print(f"  {name:<8} {value * 1e6:8.1f} us/step  ({value / mean['without']:.4f}x)")
        print(f"  with MLBenchLogger / without: {ratio:.4f} ({verdict(ratio, 1.01, higher_is_better=False)} <= 1.01)")
        print("  per round: " + ", ".join(f"{r:.4f}" for r in per_round))
        figures[kind] = {
            "us_per_step": {name: value * 1e6 for name, value in mean.items()},
            "blocks_us_per_step": {name: [v * 1e6 for v in values] for name, values in means.items()},
            "ratio_mlbench_vs_without": ratio,
            "ratio_per_round": per_round,
        }
        if "csv" in mean:
            figures[kind]["ratio_csv_vs_without"] = mean["csv"] / mean["without"]
    inside = TimedMLBenchLogger.spent / max(1, TimedMLBenchLogger.calls)
    step = statistics.fmean(cpu["without"])
    print(
        f"in MLBenchLogger.log_metrics: {inside * 1e6:.2f} us of the training thread's CPU per call,"
        f" {inside / step:.2%} of a step's CPU without it (the dispatcher's share is in the CPU-time ratio)"
    )
    figures["log_metrics_us_per_call"] = inside * 1e6
    figures["log_metrics_share_of_step"] = inside / step
    print(
        f"{args.calls} log_metrics calls alone, until stored: {per_call * 1e6:.2f} us of CPU per call, all threads"
        f" ({per_call_thread * 1e6:.2f} us in the training thread): {per_call / step:.2%} of a step's CPU"
        f" ({verdict(1 + per_call / step / args.every, 1.01, higher_is_better=False)} <= 1% at one call in"
        f" {args.every} steps)"
    )
    figures["delivered_cpu_us_per_call"] = per_call * 1e6
    figures["delivered_cpu_us_per_call_training_thread"] = per_call_thread * 1e6
    figures["delivered_cpu_share_of_step"] = per_call / step
    figures["delivered_cpu_share_at_every"] = per_call / step / args.every
    write_results("frameworks", figures)


if __name__ == "__main__":
    main()
