"""The wire layer: everything that talks HTTP to a dashboard, and nothing that queues.

``api.ApiClient`` is the public face (the upstream methods and the extensions, also
importable as :mod:`mlbench_metrics.api`); under it, ``transport.Transport`` (the
session, retries under ``retry.RetryPolicy``, worker threads, errors at the one
boundary), ``fast_poster.FastPoster`` (the batch endpoint's raw-socket fast path),
``posting.MetricsPoster`` (a batch: the batch endpoint or single posts),
``result`` (what a batch post answers, per metric), ``dropin`` (each argument as
upstream sends it), ``extensions``, ``discovery`` (finding the dashboard in Kubernetes),
``images`` and ``timeouts``. Nothing here imports the delivery, spool or logger layers:
they build on this one.
"""

from __future__ import annotations

from .api import ApiClient
from .result import BatchFuture, BatchResult, Gather
from .retry import RetryPolicy
from .run_spec import RunSpec
from .timeouts import Timeouts

__all__ = ["ApiClient", "BatchFuture", "BatchResult", "Gather", "RetryPolicy", "RunSpec", "Timeouts"]
