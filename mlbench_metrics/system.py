"""System metrics: a psutil sampler thread posting through a MetricsLogger.

Threads: :class:`SystemMetrics` owns one ``mlbench-sampler`` thread, started in the
constructor and stopped by :meth:`SystemMetrics.stop` or by its logger's ``close()``.
Sources are injected (``psutil_module``, ``nvml``) so tests and other platforms can
supply their own.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Final

import psutil

from ._threads import start_thread
from .errors import ConfigError
from .logger.metrics_logger import MetricsLogger

__all__ = ["SystemMetrics"]

_log = logging.getLogger("mlbench_metrics")

_COUNTERS: Final = (
    ("net_bytes_sent", "net", "bytes_sent"),
    ("net_bytes_recv", "net", "bytes_recv"),
    ("disk_read_bytes", "disk", "read_bytes"),
    ("disk_write_bytes", "disk", "write_bytes"),
)


def _load_nvml() -> Any:
    """The ``pynvml`` module with NVML initialised, or None where there is no NVIDIA driver."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # not installed, or no driver/GPU: GPU metrics are simply left out
        return None


class SystemMetrics:
    """Sample this machine and process every ``interval`` seconds into a logger.

    Example::

        with MetricsLogger(run_id, url=...) as log:
            SystemMetrics(log, interval=10.0)      # stopped when the logger closes
            train()

    Gauges: ``cpu_percent`` (whole machine), ``memory_used`` (bytes), ``process_rss``
    (bytes), and with NVML present ``gpu<i>_util`` (%) and ``gpu<i>_memory_used`` (bytes).
    Counters, posted as cumulative metrics (running totals since boot): network
    ``net_bytes_sent``/``net_bytes_recv`` and disk ``disk_read_bytes``/``disk_write_bytes``.

    Args:
        logger: the :class:`~mlbench_metrics.MetricsLogger` to record into.
        interval: seconds between samples (the first is taken at once).
        psutil_module: where readings come from (default: ``psutil``).
        nvml: an initialised ``pynvml``-like module, False to skip GPUs, or None to try
            ``pynvml``.
        pid: the process whose RSS is reported (default: this one).
    """

    def __init__(
        self,
        logger: MetricsLogger,
        interval: float = 10.0,
        *,
        psutil_module: Any = psutil,
        nvml: Any = None,
        pid: int | None = None,
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise ConfigError(f"interval must be a positive number of seconds, got {interval!r}")
        self.interval = float(interval)
        self._logger = logger
        self._ps = psutil_module
        self._process = psutil_module.Process(pid if pid is not None else os.getpid())
        self._nvml: Any = _load_nvml() if nvml is None else (nvml or None)
        self._stop = threading.Event()
        self.samples = 0
        self._ps.cpu_percent(None)  # primes the counter: the next call measures since now
        logger.attach(self)
        self._thread = start_thread(self._run, "mlbench-sampler")

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:  # a failing source must not end sampling, nor training
                _log.warning("mlbench-metrics: system sample failed: %s", exc)
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        """Take one sample of every metric and record it."""
        logger = self._logger
        if logger.closed:
            self._stop.set()
            return
        record = logger.log
        record("cpu_percent", float(self._ps.cpu_percent(None)))
        record("memory_used", int(self._ps.virtual_memory().used))
        record("process_rss", int(self._process.memory_info().rss))
        net = self._ps.net_io_counters()
        disk = self._ps.disk_io_counters()
        sources = {"net": net, "disk": disk}
        for name, source, field in _COUNTERS:
            counters = sources[source]
            if counters is not None:
                logger.log_cumulative(name, int(getattr(counters, field)))
        if self._nvml is not None:
            self._sample_gpus()
        self.samples += 1

    def _sample_gpus(self) -> None:
        nvml = self._nvml
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            self._logger.log(f"gpu{i}_util", float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            self._logger.log(f"gpu{i}_memory_used", int(nvml.nvmlDeviceGetMemoryInfo(handle).used))

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sampling and join the thread; idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._logger.detach(self)

    @property
    def running(self) -> bool:
        """Whether the sampler thread is alive."""
        return self._thread.is_alive()

    def __enter__(self) -> SystemMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
