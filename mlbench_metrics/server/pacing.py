"""Dashboard pacing: single metric posts stored one at a time, at about N a second.

The real dashboard (Django on SQLite) stores one posted metric at a time, 8-12 ms each:
55-90 metrics a second, whatever the client does. ``mlbench-metrics serve --pace N``
(``serve(pace=N)``) wraps the API in a :class:`Pacer` so that this server is as slow for
single posts (``POST /api/metrics/``), and the slow-dashboard case can be tested and
measured on one machine. Everything else (batches, reads, runs) is served at full speed,
so a test can watch the charts fill while they fill slowly.

No threads are started here: the pacer runs in the HTTP layer's threads. Paced posts
go to the layer's one serial thread (see :meth:`Pacer.paces`), so while 40 clients post,
reads still find a free worker; the pacer's own lock keeps them in turn all the same
when it is called from anywhere else.
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Callable, Final

from ._http import Handler, Request, Response

__all__ = ["Pacer"]

_SINGLE_POST: Final = re.compile(r"/api/metrics/?")


class Pacer:
    """Make single metric posts take turns, each taking at least ``1 / rate`` seconds.

    Example::

        pacer = Pacer(app.handle, rate=80)     # the dashboard's pace
        HttpServer(host, port, pacer, ...)      # then pacer.close() when stopping

    A post is handled while the others wait; then, if it took less than its share of a
    second, the pacer waits out the rest before letting the next one in. So the server
    stores at most about ``rate`` single posts a second, and each one answers no sooner
    than the dashboard's would.

    Args:
        handler: the API's request handler.
        rate: single posts stored per second at most (a positive number).
        clock: seconds, monotonic (tests inject their own).
        sleep: waits a number of seconds (tests inject their own); by default a wait
            that :meth:`close` cuts short.

    Raises:
        ValueError: ``rate`` is not a positive finite number.
    """

    def __init__(
        self,
        handler: Handler,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < math.inf:
            raise ValueError(f"pace must be a positive number of metrics a second, got {rate!r}")
        self.rate = float(rate)
        self._handler = handler
        self._interval = 1.0 / self.rate
        self._clock = clock
        self._closed = threading.Event()
        self._sleep = sleep if sleep is not None else self._closed.wait
        # One post at a time, as the dashboard's single SQLite writer does.
        self._turn = threading.Lock()

    @staticmethod
    def paces(request: Request) -> bool:
        """Whether ``request`` is one the pacer makes take turns (a single metric post).

        The HTTP layer hands such requests to one thread of their own (``serial``), so
        posts waiting their turn never hold the workers that reads and batches need.
        """
        return request.method == "POST" and _SINGLE_POST.fullmatch(request.path) is not None

    def __call__(self, request: Request) -> Response:
        """Answer ``request``; single metric posts take their turn and their time."""
        if not self.paces(request):
            return self._handler(request)
        with self._turn:
            started = self._clock()
            response = self._handler(request)
            left = started + self._interval - self._clock()
            if left > 0 and not self._closed.is_set():
                self._sleep(left)
        return response

    def close(self) -> None:
        """Stop pacing: waits end at once, so stopping the server is not held up."""
        self._closed.set()
