"""``mlbench-metrics demo``: a training loop logging real metrics, end to end, in seconds.

It starts the embedded server in this process (or uses ``url``), creates a run, trains a
small two-layer network on a synthetic two-spirals problem in pure Python, with timers
around its phases, a cumulative sample counter and system metrics, then reads the run's
metrics back from the server and prints a summary: per metric its count, last, min and
max; the delivery stats; what one ``log()`` cost the training loop; a sparkline of the
loss.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from typing import Any, TextIO

from ..client.api import ApiClient
from ..logger.metrics_logger import MetricsLogger
from ..runs import Run
from ..system import SystemMetrics
from .text import fmt_value, metrics_table, sparkline

__all__ = ["run_demo"]


def _spirals(n: int, rng: random.Random) -> list[tuple[float, float, int]]:
    """Two interleaved spirals: a problem a linear model cannot solve."""
    points = []
    for i in range(n):
        label = i % 2
        r = rng.uniform(0.05, 1.0)
        angle = 3.0 * math.pi * r + label * math.pi
        points.append((r * math.cos(angle) + rng.gauss(0, 0.03), r * math.sin(angle) + rng.gauss(0, 0.03), label))
    return points


class _Net:
    """A 2 -> hidden (tanh) -> 1 (sigmoid) network, trained by plain SGD."""

    def __init__(self, hidden: int, rng: random.Random) -> None:
        self.w1 = [[rng.gauss(0, 1.0), rng.gauss(0, 1.0)] for _ in range(hidden)]
        self.b1 = [0.0] * hidden
        self.w2 = [rng.gauss(0, 0.5) for _ in range(hidden)]
        self.b2 = 0.0

    def forward(self, x: float, y: float) -> tuple[list[float], float]:
        h = [math.tanh(w[0] * x + w[1] * y + b) for w, b in zip(self.w1, self.b1)]
        z = sum(wi * hi for wi, hi in zip(self.w2, h)) + self.b2
        return h, 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))

    def gradients(self, batch: list[tuple[float, float, int]]) -> tuple[float, float, list[Any]]:
        """Loss, accuracy and gradients of a batch (binary cross-entropy)."""
        hidden = len(self.w2)
        gw1 = [[0.0, 0.0] for _ in range(hidden)]
        gb1 = [0.0] * hidden
        gw2 = [0.0] * hidden
        gb2 = 0.0
        loss = 0.0
        correct = 0
        for x, y, label in batch:
            h, p = self.forward(x, y)
            loss -= math.log(p if label else 1.0 - p + 1e-12) if p > 0 else 30.0
            correct += (p >= 0.5) == bool(label)
            dz = p - label
            gb2 += dz
            for j in range(hidden):
                gw2[j] += dz * h[j]
                dh = dz * self.w2[j] * (1.0 - h[j] * h[j])
                gw1[j][0] += dh * x
                gw1[j][1] += dh * y
                gb1[j] += dh
        n = len(batch)
        return loss / n, correct / n, [gw1, gb1, gw2, gb2, n]

    def step(self, grads: list[Any], lr: float) -> None:
        gw1, gb1, gw2, gb2, n = grads
        scale = lr / n
        for j in range(len(self.w2)):
            self.w1[j][0] -= scale * gw1[j][0]
            self.w1[j][1] -= scale * gw1[j][1]
            self.b1[j] -= scale * gb1[j]
            self.w2[j] -= scale * gw2[j]
        self.b2 -= scale * gb2


def run_demo(url: str | None = None, token: str | None = None, seconds: float = 8.0, out: TextIO = sys.stdout) -> int:
    """Run the demo; returns the exit code (0 when every logged metric was stored)."""
    from ..server import serve

    started = time.monotonic()
    server = serve() if url is None else None
    try:
        address = server.address if server is not None else url
        with ApiClient(url=address, token=token) as client:
            run = Run.create(
                time.strftime("demo-%Y%m%d-%H%M%S"),
                1,
                custom_image_name="local",
                custom_image_command="mlbench-metrics demo",
                backend="gloo",
                client=client,
            )
            where = f"the embedded server at {server.url}" if server is not None else address
            print(f"run {run.id} ({run.name}) on {where}; training for {seconds:.0f} s ...", file=out, flush=True)
            if server is not None or client.server_extensions():  # this package's server: it has the page
                base = server.url if server is not None else f"http://{address}"
                print(f"web UI: {base}/#/run/{run.id} (charts while it trains)", file=out, flush=True)
            blocks, stats = _train(run.id, client, seconds)
            try:
                run.mark_finished()
            except Exception:  # the dashboard cannot: its runs end with their Kubernetes job
                pass
            metrics = run.metrics()
        _summary(out, run, metrics, stats, blocks, time.monotonic() - started)
        if server is not None:
            print(
                "the demo's server stops now, and its data with it; to keep a run and its page, "
                "start `mlbench-metrics serve` and run `mlbench-metrics demo --url 127.0.0.1:8080`",
                file=out,
            )
        return 0 if stats.stored == stats.logged and not stats.dropped_total else 1
    finally:
        if server is not None:
            server.stop()


def _train(run_id: int, client: ApiClient, seconds: float) -> tuple[list[int], Any]:
    rng = random.Random(7)
    data = _spirals(2000, rng)
    train, test = data[:1600], data[1600:]
    net = _Net(16, rng)
    batch_size = 32
    blocks: list[int] = []  # ns spent in each step's three logging calls
    with MetricsLogger(run_id, client=client, rank=0, flush_interval=0.25) as log:
        system = SystemMetrics(log, interval=0.5)
        deadline = time.monotonic() + seconds
        step = 0
        epoch = 0
        while time.monotonic() < deadline:
            log.epoch = epoch
            rng.shuffle(train)
            for start in range(0, len(train), batch_size):
                with log.timer("batch_load"):
                    batch = train[start : start + batch_size]
                with log.timer("fwd_pass"):
                    loss, accuracy, grads = net.gradients(batch)
                with log.timer("opt_step"):
                    net.step(grads, lr=0.5 if epoch < 20 else 0.2)
                t0 = time.perf_counter_ns()
                log.log("train_loss", loss, step=step)
                log.log("train_accuracy", accuracy, step=step)
                log.increment("samples_seen", len(batch))
                blocks.append(time.perf_counter_ns() - t0)
                step += 1
                if time.monotonic() >= deadline:
                    break
            with log.timer("comp_metrics"):
                val = sum((net.forward(x, y)[1] >= 0.5) == bool(label) for x, y, label in test) / len(test)
            log.log("val_accuracy", val)
            epoch += 1
        system.stop()  # before the last flush: a sample after it would be counted, not yet stored
        log.flush(30)
        stats = log.stats
    return blocks, stats


def _summary(
    out: TextIO, run: Run, metrics: dict[str, list[tuple[Any, Any]]], stats: Any, blocks: list[int], took: float
) -> None:
    print(f"\nmetrics of run {run.id}, read back from the server:", file=out)
    print(metrics_table(metrics), file=out)
    print(
        f"\ndelivery: {stats.logged:,} logged, {stats.stored:,} stored, {stats.retried:,} retried, "
        f"{stats.dropped_total:,} dropped",
        file=out,
    )
    if blocks:
        # Three calls per step (two log(), one increment()); the median leaves out the
        # steps during which another thread (the server, here) took the GIL.
        print(
            f"cost of one logging call in the training loop: {statistics.median(blocks) / 3:,.0f} ns median, "
            f"{sum(blocks) / len(blocks) / 3:,.0f} ns mean (over {len(blocks) * 3:,} calls)",
            file=out,
        )
    losses = [float(v) for _, v in metrics.get("train_loss @ 0", []) if isinstance(v, (int, float))]
    if losses:
        print(f"train_loss {fmt_value(losses[0])} -> {fmt_value(losses[-1])}: {sparkline(losses)}", file=out)
    print(f"done in {took:.1f} s", file=out)
