"""mlbench-metrics: record training metrics to an MLBench dashboard.

The wire layer, a drop-in replacement for ``mlbench_core.api.ApiClient``::

    from mlbench_metrics import ApiClient

    with ApiClient(url="127.0.0.1:8080") as client:
        client.post_metric(run_id, "loss @ 0", 0.25).result()

The embedded server that speaks the same API lives in :mod:`mlbench_metrics.server`.
"""

from __future__ import annotations

from ._retry import RetryPolicy
from ._version import __version__
from .api import MLBENCH_BACKENDS, MLBENCH_IMAGES, ApiClient, BatchResult
from .config import Timeouts
from .errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeout,
    ClientApiError,
    ClosedError,
    ConfigError,
    DiscoveryError,
    MetricsError,
    SpoolError,
    TransientApiError,
    TransportError,
)
from .records import Metric, MetricBatch

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
    "DiscoveryError",
    "Metric",
    "MetricBatch",
    "MetricsError",
    "RetryPolicy",
    "SpoolError",
    "Timeouts",
    "TransientApiError",
    "TransportError",
    "__version__",
]
