"""Warnings about lost records and failed deliveries: said at once, then again after a quiet interval.

A warning given once and never again hides an overflow that starts hours later; one per
event floods the log. :class:`Notices` says the first occurrence of each kind at once,
keeps quiet for ``interval`` seconds (a minute) while counting, and says the next one
after that with the count since the last warning, as OpenTelemetry's SDK does (what is
counted and not said by the end is in ``stats``). Thread-safe; the clock is injected
(tests use a fake one). No threads.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Final

__all__ = ["QUIET_INTERVAL", "Notices", "dropped", "failed", "refused"]

QUIET_INTERVAL: Final = 60.0
"""Seconds after a warning during which the same kind is counted, not said again."""

Say = Callable[[int, bool], str]
"""The warning's text for ``n`` occurrences; the flag: some were said before."""


class _Kind:
    __slots__ = ("last", "said", "say", "unsaid")

    def __init__(self, say: Say) -> None:
        self.last = 0.0  # when it was last said
        self.said = False
        self.unsaid = 0  # counted since then
        self.say = say


class Notices:
    """Warnings by kind, each said again only after a quiet interval, with its count.

    Args:
        log: where warnings go.
        clock: monotonic seconds (``time.monotonic``).
        interval: the quiet interval in seconds.
    """

    def __init__(
        self, log: logging.Logger, clock: Callable[[], float] = time.monotonic, interval: float = QUIET_INTERVAL
    ) -> None:
        self._log = log
        self._clock = clock
        self._interval = interval
        self._kinds: dict[str, _Kind] = {}
        self._lock = threading.Lock()

    def note(self, kind: str, n: int, say: Say) -> None:
        """``n`` more occurrences of ``kind``: warn now (the first time, or once the quiet
        interval has passed since the last warning), else count them for the next one."""
        if n <= 0:
            return
        now = self._clock()
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None:
                entry = self._kinds[kind] = _Kind(say)
            entry.say = say  # the latest text (an error's message may change)
            entry.unsaid += n
            if entry.said and now - entry.last < self._interval:
                return
            text = entry.say(entry.unsaid, entry.said)
            entry.last, entry.said, entry.unsaid = now, True, 0
        self._log.warning(text)


# -- the texts ---------------------------------------------------------------------------


def dropped(reason: str) -> Say:
    """The text for records dropped for ``reason`` (a :class:`DropReason`'s value)."""

    def say(n: int, again: bool) -> str:
        if again:
            return f"mlbench-metrics: dropped {n} more records ({reason}) since the last warning; see stats.dropped"
        return f"mlbench-metrics: dropped {n} records ({reason}); see stats.dropped"

    return say


def refused(error: object) -> Say:
    """The text for records the server refused for good with ``error``."""

    def say(n: int, again: bool) -> str:
        if again:
            return f"mlbench-metrics: the server refused {n} more records since the last warning: {error}"
        return f"mlbench-metrics: the server refused {n} records: {error}"

    return say


def failed(kind: str, text: str) -> Say:
    """The text for ``kind`` (deliver, spool, dispatcher) failing with ``text``."""

    def say(n: int, again: bool) -> str:
        if again:
            return f"mlbench-metrics: {kind} failed {n} more times since the last warning; the latest: {text}"
        return f"mlbench-metrics: {kind} failed: {text}"

    return say
