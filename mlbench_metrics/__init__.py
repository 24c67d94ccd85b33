"""mlbench-metrics: record training metrics to an MLBench dashboard.

In a training loop::

    import mlbench_metrics

    log = mlbench_metrics.init(run_id, url="127.0.0.1:8080", rank=rank)
    for step, batch in enumerate(loader):
        with log.timer("fwd_pass"):
            loss = model(batch)
        log.log("train_loss", loss, step=step)
    mlbench_metrics.finish()

The wire layer is a drop-in replacement for ``mlbench_core.api.ApiClient``::

    from mlbench_metrics import ApiClient

    with ApiClient(url="127.0.0.1:8080") as client:
        client.post_metric(run_id, "loss @ 0", 0.25).result()

The embedded server that speaks the same API lives in :mod:`mlbench_metrics.server`.
"""

from __future__ import annotations

from ._version import __version__
from .client.api import MLBENCH_BACKENDS, MLBENCH_IMAGES, ApiClient, BatchResult
from .client.retry import RetryPolicy
from .client.timeouts import Timeouts
from .delivery import Stats
from .errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeout,
    ClientApiError,
    ClosedError,
    ConfigError,
    DashboardWarning,
    DiscoveryError,
    MetricsError,
    SpoolError,
    TimerError,
    TransientApiError,
    TransportError,
)
from .logger.current import current, finish, flush, increment, init, log, log_many, timer
from .logger.current import timed_call as timed
from .logger.metrics_logger import MetricsLogger
from .records import Metric, MetricBatch
from .runs import Run
from .system import SystemMetrics
from .timing import Timer

# Sorted, and checked against the module's public names by tests/unit/test_public_api.py.
__all__ = [
    "MLBENCH_BACKENDS",
    "MLBENCH_IMAGES",
    "ApiClient",
    "ApiConnectionError",
    "ApiError",
    "ApiTimeout",
    "BatchResult",
    "ClientApiError",
    "ClosedError",
    "ConfigError",
    "DashboardWarning",
    "DiscoveryError",
    "Metric",
    "MetricBatch",
    "MetricsError",
    "MetricsLogger",
    "RetryPolicy",
    "Run",
    "SpoolError",
    "Stats",
    "SystemMetrics",
    "Timeouts",
    "Timer",
    "TimerError",
    "TransientApiError",
    "TransportError",
    "__version__",
    "current",
    "finish",
    "flush",
    "increment",
    "init",
    "log",
    "log_many",
    "timed",
    "timer",
]
