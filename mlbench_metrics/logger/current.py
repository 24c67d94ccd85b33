"""The module-level API: ``init()`` makes a :class:`MetricsLogger` current, and
``log``, ``timer``, ``timed``, ``increment``, ``flush`` and ``finish`` act on it, in the
style users know from other trackers. No threads, no I/O of its own.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, TypeVar

from ..errors import ClosedError
from ..timing import Timer
from .metrics_logger import MetricsLogger

__all__ = ["current", "finish", "flush", "increment", "init", "log", "log_many", "timed_call", "timer"]

_F = TypeVar("_F", bound=Callable[..., Any])

_current: MetricsLogger | None = None


def init(run_id: int | str | None = None, **kwargs: Any) -> MetricsLogger:
    """Create a :class:`MetricsLogger`, make it the current one and return it.

    A current logger from an earlier ``init()`` is closed first. Arguments are those of
    :class:`MetricsLogger`.
    """
    global _current
    if _current is not None and not _current.closed:
        _current.close()
    _current = MetricsLogger(run_id, **kwargs)
    return _current


def current() -> MetricsLogger:
    """The logger the module-level functions use.

    Raises:
        ClosedError: there is none (call ``init()`` first).
    """
    if _current is None:
        raise ClosedError("no current logger: call mlbench_metrics.init(run_id, ...) first")
    return _current


def log(name: str, value: float | int | str, step: int | None = None, **metadata: Any) -> None:
    """:meth:`MetricsLogger.log` on the current logger."""
    current().log(name, value, step, **metadata)


def log_many(values: Mapping[str, float | int | str], step: int | None = None, **metadata: Any) -> None:
    """:meth:`MetricsLogger.log_many` on the current logger."""
    current().log_many(values, step, **metadata)


def increment(name: str, delta: float | int = 1) -> float | int:
    """:meth:`MetricsLogger.increment` on the current logger."""
    return current().increment(name, delta)


def timer(name: str, cumulative: bool = False) -> Timer:
    """:meth:`MetricsLogger.timer` on the current logger."""
    return current().timer(name, cumulative)


def timed_call(name: str, cumulative: bool = False) -> Callable[[_F], _F]:
    """:meth:`MetricsLogger.timed` on the current logger (exported as ``timed``)."""
    return current().timed(name, cumulative)


def flush(timeout: float | None = 30.0) -> bool:
    """:meth:`MetricsLogger.flush` on the current logger."""
    return current().flush(timeout)


def finish(timeout: float | None = None, *, failed: bool | None = None) -> int:
    """Close the current logger (see :meth:`MetricsLogger.close`); returns undelivered records."""
    global _current
    logger, _current = _current, None
    return 0 if logger is None else logger.close(timeout, failed=failed)
