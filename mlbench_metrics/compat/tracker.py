"""``Tracker`` and ``AverageMeter``: mlbench_core's training-loop bookkeeping.

The same constructor, phase names, stats and goal as ``mlbench_core.utils.tracker``; what
it sends goes through :meth:`~mlbench_metrics.compat.LogMetrics.log` (looked up in this
module at each call, so a test suite can patch ``mlbench_metrics.compat.tracker.LogMetrics``
as upstream's patch ``mlbench_core.utils.tracker.LogMetrics``). No threads.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any, Callable, Iterable, Protocol, Sequence

from .log_metrics import LogMetrics

__all__ = ["AverageMeter", "NamedMetric", "Tracker"]

_COMMUNICATION_STEPS = ["agg"]
_COMPUTE_STEPS = ["fwd_pass", "comp_loss", "backprop", "opt_step"]
_METRICS_STEPS = ["comp_metrics"]
_PREPROCESS_STEPS = ["batch_load"]


class AverageMeter:
    """The average and the last value of a stat (``mlbench_core.utils.AverageMeter``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every value."""
        self.val: float = 0
        self.avg: float = 0
        self.sum: float = 0
        self.count: float = 0

    def update(self, val: float, n: float = 1) -> None:
        """Add ``val``, the average of ``n`` samples."""
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count


class NamedMetric(Protocol):
    """What a Tracker needs of a metric object: its name (``TopKAccuracy(1).name``)."""

    name: str


Goal = Callable[[str, Any, "Tracker"], Any]


def _steps(given: Any, default: list[str]) -> list[str]:
    if given is None:
        return list(default)
    if isinstance(given, str) or not isinstance(given, Iterable):
        return [given]
    return list(given)


class Tracker:
    """Drop-in for ``mlbench_core.utils.tracker.Tracker``: run stats, phase times, the goal.

    Example::

        tracker = Tracker([TopKAccuracy(1)], run_id, rank, goal=task1_time_to_accuracy_light_goal())
        tracker.start()
        tracker.train()
        tracker.batch_start()
        ...; tracker.record_batch_fwd_pass()
        ...; tracker.record_batch_opt_step()
        tracker.batch_end()
        tracker.record_loss(loss, batch_size, log_to_api=True)  # "train_loss @ <rank>"
        tracker.epoch_end()  # each phase's time this epoch, e.g. "fwd_pass @ <rank>"

    Stats go to the dashboard through :meth:`LogMetrics.log`. When ``goal`` first returns
    a result, rank 0 (with ``log_to_api``) records it as ``TaskResult``, then
    ``TotalCumulativeTrainTime`` and each phase's ``global_cum_<phase>`` total, as
    upstream does (without upstream's pauses between them: nothing needs them here).

    Args:
        metrics: metric objects with a ``name``; the first is the primary one.
        run_id: the run's id in the dashboard.
        rank: this worker's rank.
        goal: ``goal(name, value, tracker)``, returning the result once reached, else None.
        communication_steps: phases counted as communication (default ``["agg"]``).
        compute_steps: phases counted as compute (``fwd_pass``, ``comp_loss``,
            ``backprop``, ``opt_step``).
        metrics_steps: phases counted as metrics computation (``comp_metrics``).
        preprocess_steps: phases counted as preprocessing (``batch_load``).
        minimize: whether a smaller primary metric is better.
        clock: seconds since the epoch (default ``time.time``, looked up at each call so
            test suites that freeze time keep working).
    """

    def __init__(
        self,
        metrics: Sequence[NamedMetric],
        run_id: Any,
        rank: Any,
        goal: Goal | None = None,
        communication_steps: Any = None,
        compute_steps: Any = None,
        metrics_steps: Any = None,
        preprocess_steps: Any = None,
        minimize: bool = False,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._clock = clock
        self.batch_times: list[tuple[str, float]] = []
        self.validation_times: list[tuple[str, float]] = []
        self.epoch_stats: dict[str, AverageMeter] = {}
        self.epoch_metrics: defaultdict[str, list[float]] = defaultdict(list)
        self.records: list[Any] = []
        self.history: list[tuple[Any, Any, str, Any, float]] = []
        self.cumulative_train_time: list[float] = []
        self.cumulative_compute_time: list[float] = []
        self.cumulative_communication_time: list[float] = []
        self.cumulative_metrics_time: list[float] = []
        self.cumulative_preprocess_time: list[float] = []
        self.cumulative_val_time: list[float] = []
        self.best_epoch = 0
        self.current_epoch = 0
        self.minimize = minimize
        self.best_metric_value: float = math.inf if minimize else 0
        self.is_training = True
        self.train_prefix = "train_"
        self.val_prefix = "val_"
        self.start_time: float | None = None
        self.metrics = metrics
        self.run_id = run_id
        self.rank = rank
        self.goal = goal
        self.goal_reached = False
        self.primary_metric = metrics[0] if len(metrics) > 0 else None
        self.communication_steps = _steps(communication_steps, _COMMUNICATION_STEPS)
        self.compute_steps = _steps(compute_steps, _COMPUTE_STEPS)
        self.metrics_steps = _steps(metrics_steps, _METRICS_STEPS)
        self.preprocess_steps = _steps(preprocess_steps, _PREPROCESS_STEPS)
        self.reset_epoch_stats()

    def _now(self) -> float:
        return time.time() if self._clock is None else self._clock()

    def _send(self, name: str, value: Any) -> None:
        """Send one stat of the current epoch (upstream's ``LogMetrics.log``); subclasses may route it."""
        LogMetrics.log(self.run_id, self.rank, self.current_epoch, name, value)

    # -- modes and timers ------------------------------------------------------------------

    def start(self) -> None:
        """Start tracking (once).

        Raises:
            RuntimeError: tracking was started before.
        """
        if self.start_time is not None:
            raise RuntimeError("Tracking already started")
        self.start_time = self._now()

    def train(self) -> None:
        """Switch to training: stats are recorded as ``train_<name>``."""
        self.is_training = True

    def validation(self) -> None:
        """Switch to validation: stats are recorded as ``val_<name>``."""
        self.is_training = False

    def validation_start(self) -> None:
        """Start timing a validation round."""
        self.validation_times = [("start", self._now())]

    def validation_end(self) -> None:
        """End a validation round and add its duration to :attr:`cumulative_val_time`."""
        self.validation_times.append(("end", self._now()))
        # Upstream replaced the start before subtracting it, so every round counted 0 s.
        self.cumulative_val_time.append(self.validation_times[-1][1] - self.validation_times[0][1])

    def batch_start(self) -> None:
        """Start a training batch."""
        self.batch_times = []
        self.record_batch_step("start")

    def record_batch_step(self, name: str) -> None:
        """Mark the end of phase ``name`` of the current batch (it began at the last mark)."""
        self.batch_times.append((name, self._now()))

    def batch_end(self) -> None:
        """End a training batch: add its time and each phase's to the epoch's totals."""
        self.record_batch_step("end")
        if len(self.batch_times) < 2:
            return
        self.batch_times.sort(key=lambda mark: mark[1])
        total = self.batch_times[-1][1] - self.batch_times[0][1]
        self.cumulative_train_time.append(total)
        phases = [(name, t1 - t0) for (_, t0), (name, t1) in zip(self.batch_times[:-1], self.batch_times[1:])]
        for steps, totals in (
            (self.compute_steps, self.cumulative_compute_time),
            (self.communication_steps, self.cumulative_communication_time),
            (self.metrics_steps, self.cumulative_metrics_time),
            (self.preprocess_steps, self.cumulative_preprocess_time),
        ):
            times = [seconds for name, seconds in phases if name in steps]
            if times:
                totals.append(sum(times))
        self._add_to_epoch("CumulativeTrainTimeEpoch", total)
        for name, seconds in phases:
            self._add_to_epoch(name, seconds)

    def _add_to_epoch(self, name: str, seconds: float) -> None:
        per_epoch = self.epoch_metrics[name]
        while len(per_epoch) <= self.current_epoch:  # upstream appended once, and failed past a gap
            per_epoch.append(0.0)
        per_epoch[self.current_epoch] += seconds

    def epoch_end(self) -> None:
        """End an epoch: log each phase's time in it (``CumulativeTrainTimeEpoch`` too)."""
        for name, per_epoch in dict(self.epoch_metrics).items():
            if len(per_epoch) > self.current_epoch:
                self._send(name, per_epoch[self.current_epoch])
        self.current_epoch += 1
        self.reset_epoch_stats()

    def reset_epoch_stats(self) -> None:
        """Start the epoch's stats afresh: loss and each metric, for training and validation."""
        names = ["loss", *(m.name for m in self.metrics)]
        self.epoch_stats = {
            prefix + n: AverageMeter() for prefix in (self.train_prefix, self.val_prefix) for n in names
        }

    # -- stats -----------------------------------------------------------------------------

    def record_stat(self, name: str, value: Any, n: int = 1, log_to_api: bool = False) -> None:
        """Record a stat (``train_<name>`` or ``val_<name>``), and check the goal.

        Args:
            name: the stat's name, without the prefix.
            value: its value.
            n: how many samples ``value`` averages.
            log_to_api: also send it to the dashboard.
        """
        name = (self.train_prefix if self.is_training else self.val_prefix) + name
        self.epoch_stats.setdefault(name, AverageMeter()).update(value, n)
        self.history.append((self.run_id, self.rank, name, value, self._now()))
        if log_to_api:
            self._send(name, value)
        if self.goal is None or self.goal_reached:
            return
        result = self.goal(name, value, self)
        if result is None:
            return
        self.goal_reached = True
        print("goal reached!")
        print(result)
        if str(self.rank) == "0" and log_to_api:
            self._send("TaskResult", result)
            self._send("TotalCumulativeTrainTime", self.get_total_train_time())
            for phase, per_epoch in sorted(dict(self.epoch_metrics).items()):
                self._send(f"global_cum_{phase}", sum(per_epoch))

    def record_loss(self, value: Any, n: int = 1, log_to_api: bool = False) -> None:
        """Record a loss value (``train_loss`` or ``val_loss``)."""
        self.record_stat("loss", value, n, log_to_api)

    def record_metric(self, metric: NamedMetric, value: Any, n: int = 1, log_to_api: bool = False) -> None:
        """Record a metric's value; in validation, the primary metric's best is kept."""
        self.record_stat(metric.name, value, n, log_to_api)
        if self.primary_metric is not None and metric.name == self.primary_metric.name and not self.is_training:
            self.update_primary_metric(value)

    def update_primary_metric(self, new_metric_value: float) -> None:
        """Keep the best primary metric value and its epoch."""
        better = (
            new_metric_value < self.best_metric_value if self.minimize else new_metric_value > self.best_metric_value
        )
        if better:
            self.best_metric_value = new_metric_value
            self.best_epoch = self.current_epoch

    def is_best(self) -> bool:
        """Whether the current epoch is the best so far."""
        return self.current_epoch == self.best_epoch

    def get_total_train_time(self) -> float:
        """Seconds spent in training batches."""
        return sum(self.cumulative_train_time)

    def get_total_compute_time(self) -> float:
        """Seconds spent in the compute phases."""
        return sum(self.cumulative_compute_time)

    def get_total_communication_time(self) -> float:
        """Seconds spent in the communication phases."""
        return sum(self.cumulative_communication_time)

    def get_total_metrics_time(self) -> float:
        """Seconds spent computing metrics."""
        return sum(self.cumulative_metrics_time)

    def get_total_preprocess_time(self) -> float:
        """Seconds spent preprocessing (loading batches)."""
        return sum(self.cumulative_preprocess_time)

    def get_total_val_time(self) -> float:
        """Seconds spent validating."""
        return sum(self.cumulative_val_time)

    def __str__(self) -> str:
        prefix = self.train_prefix if self.is_training else self.val_prefix
        parts = [f"loss={self.epoch_stats[prefix + 'loss'].avg:6.2e}"]
        parts += [f"{m.name} {self.epoch_stats[prefix + m.name].avg:.2e}" for m in self.metrics]
        marks = sorted(self.batch_times, key=lambda mark: mark[1])
        parts.append(" | ".join(f"{name} {t1 - t0:.1e}" for (_, t0), (name, t1) in zip(marks[:-1], marks[1:])))
        return " | ".join(parts)

    # -- the phases of a batch, each marking where it ends ---------------------------------------

    def record_batch_init(self) -> None:
        """Mark the end of the batch's initialisation (``init``)."""
        self.record_batch_step("init")

    def record_batch_load(self) -> None:
        """Mark the end of loading the batch (``batch_load``)."""
        self.record_batch_step("batch_load")

    def record_batch_fwd_pass(self) -> None:
        """Mark the end of the forward pass (``fwd_pass``)."""
        self.record_batch_step("fwd_pass")

    def record_batch_comp_loss(self) -> None:
        """Mark the end of computing the loss (``comp_loss``)."""
        self.record_batch_step("comp_loss")

    def record_batch_backprop(self) -> None:
        """Mark the end of backpropagation (``backprop``)."""
        self.record_batch_step("backprop")

    def record_batch_agg(self) -> None:
        """Mark the end of aggregating across workers (``agg``)."""
        self.record_batch_step("agg")

    def record_batch_opt_step(self) -> None:
        """Mark the end of the optimizer step (``opt_step``)."""
        self.record_batch_step("opt_step")

    def record_batch_comp_metrics(self) -> None:
        """Mark the end of computing the batch's metrics (``comp_metrics``)."""
        self.record_batch_step("comp_metrics")
