"""``LogMetrics`` and ``Tracker`` for code written for ``mlbench_core``, over MetricsLogger.

An MLBench benchmark script switches by changing one import::

    from mlbench_metrics.compat import AverageMeter, LogMetrics, Tracker
    # was: from mlbench_core.utils import AverageMeter, LogMetrics, Tracker

and keeps its calls: ``LogMetrics.log(run_id, rank, epoch, name, value)``, the Tracker's
phases (``batch_start``, ``record_batch_fwd_pass``, ..., ``batch_end``, ``epoch_end``)
and its stats. What changes is the delivery: batched, retried and spooled through a
:class:`~mlbench_metrics.MetricsLogger` per ``(run_id, rank)`` (see
:mod:`.log_metrics`). The modules mirror upstream's: ``log_metrics`` and ``tracker``.
"""

from __future__ import annotations

from .log_metrics import LogMetrics
from .tracker import AverageMeter, NamedMetric, Tracker

__all__ = ["AverageMeter", "LogMetrics", "NamedMetric", "Tracker"]
