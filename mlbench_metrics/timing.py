"""Timers: as an object, a context manager and a decorator, on ``time.perf_counter_ns``.

A timer measures and hands the duration in seconds to a callback (the logger's), so it
knows nothing of delivery. Decorated functions get a fresh timer per call, so they are
thread-safe and re-entrant (a recursive or concurrently called function times each call).
Negative durations (clock adjustments) are clamped to 0. No threads, no I/O.
"""

from __future__ import annotations

import functools
import inspect
import math
from time import perf_counter_ns
from typing import Any, Callable, TypeVar, cast

from .errors import TimerError

__all__ = ["Timer", "timed"]

_F = TypeVar("_F", bound=Callable[..., Any])

Recorder = Callable[[str, float, bool], None]


class Timer:
    """Time a block of code and record how long it took, in seconds.

    Example::

        with log.timer("fwd_pass"):           # as a context manager
            loss = model(batch)

        t = log.timer("epoch").start()        # as an object
        ...
        seconds = t.stop()

    Attributes:
        name: the metric name the duration is recorded under.
        cumulative: record the running total of all durations instead.
    """

    __slots__ = ("_last", "_record", "_start", "cumulative", "name")

    def __init__(self, record: Recorder, name: str, cumulative: bool = False) -> None:
        self._record = record
        self.name = name
        self.cumulative = cumulative
        self._start = -1

    @property
    def last(self) -> float:
        """The last measured duration in seconds (NaN before the first)."""
        try:
            return self._last
        except AttributeError:
            return math.nan

    @property
    def running(self) -> bool:
        """Whether the timer has been started and not stopped."""
        return self._start >= 0

    def start(self) -> Timer:
        """Start timing; returns the timer.

        Raises:
            TimerError: it is already running.
        """
        if self._start >= 0:
            raise TimerError(f"timer {self.name!r} is already running; stop() it first")
        self._start = perf_counter_ns()
        return self

    def stop(self) -> float:
        """Stop timing, record the duration and return it in seconds.

        Raises:
            TimerError: it is not running.
        """
        end = perf_counter_ns()
        if self._start < 0:
            raise TimerError(f"timer {self.name!r} is not running; start() it first")
        elapsed = end - self._start
        self._start = -1
        seconds = elapsed / 1e9 if elapsed > 0 else 0.0
        self._last = seconds
        self._record(self.name, seconds, self.cumulative)
        return seconds

    def __enter__(self) -> Timer:
        if self._start >= 0:
            raise TimerError(f"timer {self.name!r} is already running; use a new one per block")
        self._start = perf_counter_ns()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Recorded whether or not the block raised: the time until a failure is real time spent.
        elapsed = perf_counter_ns() - self._start
        self._start = -1
        seconds = elapsed / 1e9 if elapsed > 0 else 0.0
        self._last = seconds
        self._record(self.name, seconds, self.cumulative)

    def __repr__(self) -> str:
        return f"Timer(name={self.name!r}, cumulative={self.cumulative}, last={self.last})"


def timed(record: Recorder, name: str, cumulative: bool = False) -> Callable[[_F], _F]:
    """A decorator that times every call of a function (or coroutine function).

    Each call gets its own :class:`Timer`, so concurrent and recursive calls are timed
    separately and correctly.
    """

    def decorate(fn: _F) -> _F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with Timer(record, name, cumulative):
                    return await fn(*args, **kwargs)

            return cast(_F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with Timer(record, name, cumulative):
                return fn(*args, **kwargs)

        return cast(_F, wrapper)

    return decorate
