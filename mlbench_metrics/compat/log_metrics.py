"""``LogMetrics``: mlbench_core's ``LogMetrics.log``, delivering through MetricsLogger.

Each ``(run_id, rank)`` gets a :class:`~mlbench_metrics.MetricsLogger`, so metrics are
batched, retried, spooled to disk when the server cannot take them, and delivered at exit
within ``shutdown_timeout``, instead of one HTTP request per metric on a thread pool.
Names and metadata are upstream's: ``"<name> @ <rank>"``, with the rank and epoch in the
metadata (as JSON).

Where the metrics go: ``LogMetrics.configure(url=...)``, else ``MLBENCH_METRICS_URL``,
else, inside Kubernetes, the dashboard found as ``ApiClient`` finds it. Outside a cluster
with no URL nothing is sent, as upstream logged only inside a cluster.

A value the logger refuses (a string longer than it keeps, such as a long ``TaskResult``)
or a name it refuses is not lost: it is sent as upstream sends it, as one post through
an ``ApiClient`` (not batched or spooled), and a warning says so once per metric.

Threads: none of its own; each logger starts its dispatcher and its client's request
workers, and the client for refused metrics its own. :meth:`LogMetrics.close` stops them
within the loggers' ``shutdown_timeout``; at exit, the loggers' exit hook does.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import numbers
import os
import threading
import time
from typing import Any, ClassVar

from ..client.api import ApiClient
from ..env import ENV_URL, env_str
from ..errors import ClosedError, ConfigError
from ..logger.metrics_logger import MetricsLogger

__all__ = ["LogMetrics"]

_log = logging.getLogger("mlbench_metrics.compat")


class _Loggers:
    """The loggers behind :class:`LogMetrics`: one per ``(run_id, rank)``.

    Each logger owns its client (unless one is configured), so its ``close()`` and the
    exit hook end that client's requests by the deadline too. Metrics a logger refuses go
    through one lenient client of their own, made when first needed.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.options: dict[str, Any] = {}
        self.single_client: ApiClient | None = None
        self.loggers: dict[tuple[str, int], MetricsLogger] = {}
        self.singles: set[concurrent.futures.Future[Any]] = set()
        self.warned: set[str] = set()
        self.off = False  # decided once: nothing is sent (no URL, not in a cluster)

    def enabled(self) -> bool:
        if self.options.get("client") is not None or self.options.get("url") or env_str(ENV_URL):
            return True
        return os.environ.get("KUBERNETES_SERVICE_HOST") is not None

    def get(self, run_id: Any, rank: int) -> MetricsLogger | None:
        key = (str(run_id), rank)
        found = self.loggers.get(key)
        if found is not None or self.off:
            return found
        with self.lock:
            found = self.loggers.get(key)
            if found is not None:
                return found
            if not self.enabled():
                self.off = True
                _log.info("LogMetrics: no %s and not in a cluster: metrics are not sent (as upstream)", ENV_URL)
                return None
            found = MetricsLogger(run_id, rank=rank, **self.options)
            self.loggers[key] = found
            return found

    def post_single(self, run_id: Any, rank: int, epoch: Any, name: str, value: Any, why: Exception) -> None:
        """Send one metric the logger refuses as upstream sends it: one post of its own."""
        final = f"{name} @ {rank}"
        if final not in self.warned:
            self.warned.add(final)
            _log.warning(
                "LogMetrics: %s; %r is sent as one post (not batched or spooled), as upstream sends it", why, final
            )
        client = self.options.get("client")
        if client is None:
            with self.lock:
                if self.single_client is None:  # lenient, as upstream's: the server answers what it refuses
                    self.single_client = ApiClient(url=self.options.get("url"), token=self.options.get("token"))
                client = self.single_client
        metadata = json.dumps({"rank": rank, "epoch": epoch}, default=str)
        future = client.post_metric(run_id, final, value, metadata=metadata)
        with self.lock:
            self.singles.add(future)
        future.add_done_callback(self._single_done)

    def _single_done(self, future: concurrent.futures.Future[Any]) -> None:
        with self.lock:
            self.singles.discard(future)

    def flush(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        ok = True
        for logger in list(self.loggers.values()):
            ok = logger.flush(_left(deadline)) and ok
        _, pending = concurrent.futures.wait(list(self.singles), timeout=_left(deadline))
        return ok and not pending

    def close(self, timeout: float | None) -> int:
        with self.lock:
            loggers, self.loggers = list(self.loggers.values()), {}
            single_client, self.single_client = self.single_client, None
        if timeout is None:
            timeout = max((logger.shutdown_timeout for logger in loggers), default=10.0)
        deadline = time.monotonic() + timeout
        left = 0
        for logger in loggers:
            left += logger.close(_left(deadline))
        _, pending = concurrent.futures.wait(list(self.singles), timeout=_left(deadline))
        if single_client is not None:
            single_client.close(timeout=_left(deadline))
        return left + len(pending)

    def after_fork_in_child(self) -> None:
        # The loggers and the client start over in the child themselves; this lock may
        # have been held by a thread that does not exist here.
        self.lock = threading.Lock()
        self.singles = set()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


_loggers = _Loggers()
os.register_at_fork(after_in_child=lambda: _loggers.after_fork_in_child())


def _as_rank(rank: Any) -> int:
    """Ranks come as ints from ``torch.distributed``, sometimes as text from a command line."""
    if not isinstance(rank, bool) and isinstance(rank, numbers.Integral) and int(rank) >= 0:
        return int(rank)
    if isinstance(rank, str) and rank.strip().isdigit():
        return int(rank)
    raise ConfigError(f"rank must be a non-negative integer, got {rank!r}")


def _epoch_parts(epoch: Any) -> tuple[int | None, dict[str, Any]]:
    """The logger's whole epoch, and the upstream epoch as metadata when it is not one.

    Upstream passes the epoch as an int, or as a fraction ("epoch 1.5") in some loops.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, numbers.Real) or not 0 <= float(epoch) < math.inf:
        return None, {"given_epoch": str(epoch)}
    value = float(epoch)
    whole = int(value)
    return whole, ({} if whole == value else {"fractional_epoch": value})


class LogMetrics:
    """Drop-in for ``mlbench_core.utils.log_metrics.LogMetrics``, delivering through MetricsLogger.

    Example::

        LogMetrics.log(run_id, rank, epoch, "train_loss", 0.25)   # stored as "train_loss @ <rank>"
        LogMetrics.configure(url="127.0.0.1:8080", shutdown_timeout=30)   # optional, before logging
        LogMetrics.close()                                          # optional: done at exit too

    Attributes:
        in_cluster: whether this process runs in Kubernetes (upstream's attribute).
    """

    in_cluster: ClassVar[bool] = os.getenv("KUBERNETES_SERVICE_HOST") is not None

    @staticmethod
    def log(run_id: Any, rank: Any, epoch: Any, metric_name: str, value: Any) -> None:
        """Record ``value`` as ``"<metric_name> @ <rank>"`` of run ``run_id``.

        Args:
            run_id: the run's id in the dashboard.
            rank: the rank of this worker.
            epoch: the current epoch (a whole number, or a fraction as some loops pass).
            metric_name: the metric's name, without the rank.
            value: a number, or text.

        Raises:
            ConfigError: the run id or rank is not one (a positive, a non-negative integer).
            DiscoveryError: no URL is set and the dashboard cannot be found in the cluster.
        """
        rank_number = _as_rank(rank)
        logger = _loggers.get(run_id, rank_number)
        if logger is None:
            return
        whole, extra = _epoch_parts(epoch)
        try:
            if whole is not None and whole != logger.epoch:
                logger.epoch = whole
            logger.log(metric_name, value, **extra)
        except ClosedError:
            _log.debug("LogMetrics: %r logged after its logger was closed", metric_name)
        except (TypeError, ValueError) as exc:
            _loggers.post_single(run_id, rank_number, epoch, metric_name, value, exc)

    @staticmethod
    def configure(**options: Any) -> None:
        """Set how the loggers made from now on deliver.

        Args:
            **options: :class:`~mlbench_metrics.MetricsLogger` arguments for each logger:
                ``url``, ``token`` (or ``client``, an ``ApiClient`` of your own, which is
                then not closed here), ``shutdown_timeout``, ``spool``, ``durable``,
                ``batch_size``, ...
        """
        with _loggers.lock:
            _loggers.options = dict(options)
            _loggers.off = False

    @staticmethod
    def logger(run_id: Any, rank: Any) -> MetricsLogger | None:
        """The logger behind ``(run_id, rank)``, made if need be; None when nothing is sent."""
        return _loggers.get(run_id, _as_rank(rank))

    @staticmethod
    def flush(timeout: float | None = 30.0) -> bool:
        """Wait until everything logged so far is stored; False if ``timeout`` passed first."""
        return _loggers.flush(timeout)

    @staticmethod
    def close(timeout: float | None = None) -> int:
        """Deliver what is left and stop (each logger within its ``shutdown_timeout``).

        Args:
            timeout: seconds for all of it; None: the loggers' ``shutdown_timeout``.

        Returns:
            How many records were not delivered (spooled, or dropped when there is no spool).
        """
        return _loggers.close(timeout)
