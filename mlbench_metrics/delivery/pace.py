"""When to fold: the server's pace, measured as it goes, against how far behind we are.

:class:`FoldPolicy` answers one question for the aggregator (``aggregator.py``): may the
records waiting now go as they are, or must they be folded into aggregates so the charts
keep up? It is told how long each send took (:meth:`FoldPolicy.observe`), keeps the
server's pace (posts answered per second) over the last few sends, and decides with a
clock it is given (wall-clock seconds, as the records' dates are). No threads, no I/O.

Modes (the logger's ``aggregate=``):

* ``"auto"``: send raw while the records waiting can be stored before the newest of them
  is :data:`LAG_BUDGET` seconds old, at the measured pace; fold otherwise;
* ``"off"``: never fold;
* a number of seconds: always fold (against a server without the batch endpoint), into
  windows of that length aligned to the clock.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Callable, Final, Union

from ..errors import ConfigError

__all__ = ["LAG_BUDGET", "PACE_PRIOR", "Aggregate", "FoldPolicy", "check_aggregate"]

LAG_BUDGET: Final = 3.0
"""Seconds a record may wait before its point is stored; beyond it, ``auto`` folds. The
charts then stay about that far behind at most (the issue's target is 5 s)."""

PACE_PRIOR: Final = 50.0
"""Posts a second assumed before any is measured: the low end of the dashboard's pace."""

_SAMPLES: Final = 8  # sends the pace is measured over

Aggregate = Union[str, float, int]
"""``"auto"``, ``"off"``, or a window in seconds."""


def check_aggregate(value: object) -> Aggregate:
    """``value`` when it is a valid ``aggregate=`` setting.

    Raises:
        ConfigError: it is none of ``"auto"``, ``"off"`` or a positive number of seconds.
    """
    if value in ("auto", "off"):
        return str(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
        return value
    raise ConfigError(f'aggregate must be "auto", "off" or a positive number of seconds, got {value!r}')


class FoldPolicy:
    """Decides between raw records and aggregates, from the measured pace.

    Example::

        policy = FoldPolicy("auto")
        policy.observe(posts=40, seconds=1.0)        # a send of 40 took a second
        policy.fold(records=200, newest_s=time.time())  # True: 5 s of work at 40/s

    Args:
        aggregate: ``"auto"``, ``"off"`` or a window in seconds.
        budget: seconds a record may wait (``auto``).
        prior: posts a second assumed until one send is measured.
        clock: wall-clock seconds (``time.time``); records' dates are compared to it.

    Raises:
        ConfigError: ``aggregate`` is invalid.
    """

    def __init__(
        self,
        aggregate: Aggregate = "auto",
        *,
        budget: float = LAG_BUDGET,
        prior: float = PACE_PRIOR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.aggregate = check_aggregate(aggregate)
        self.budget = budget
        self.prior = prior
        self.clock = clock
        self._samples: collections.deque[tuple[int, float]] = collections.deque(maxlen=_SAMPLES)

    @property
    def off(self) -> bool:
        """Whether folding is off."""
        return self.aggregate == "off"

    @property
    def window_us(self) -> int | None:
        """The fixed window in microseconds; None in ``auto`` (one window per send)."""
        if isinstance(self.aggregate, str):
            return None
        return max(1, round(self.aggregate * 1e6))

    @property
    def pace(self) -> float:
        """Posts the server answers a second, over the last sends (the prior before any)."""
        seconds = sum(s for _, s in self._samples)
        if seconds <= 0:
            return self.prior
        return max(1e-3, sum(p for p, _ in self._samples) / seconds)

    def observe(self, posts: int, seconds: float) -> None:
        """A send of ``posts`` single posts was answered in ``seconds``."""
        if posts > 0 and seconds >= 0:
            self._samples.append((posts, max(seconds, 1e-4)))

    def remaining(self, posts: int, elapsed: float) -> float:
        """Posts of a send of ``posts`` still unanswered ``elapsed`` seconds in (estimated)."""
        return max(0.0, posts - self.pace * elapsed)

    def fold(self, records: float, newest_s: float) -> bool:
        """Whether ``records`` waiting, the newest logged at ``newest_s``, must be folded.

        Args:
            records: single posts it would take to send them raw (with what is ahead).
            newest_s: the newest one's date, in wall-clock seconds.
        """
        if self.aggregate == "off":
            return False
        if self.aggregate != "auto":
            return True
        age = max(0.0, self.clock() - newest_s)
        return age + records / self.pace > self.budget
