"""The dispatcher's seam: what it delivers through, what it is built from, when it tries again.

* :data:`Deliver`: sends one batch and answers per record (a :class:`BatchFuture`);
  :func:`deliver_to` is the client's, making one attempt per call. A new delivery target
  is a ``Deliver``; a wrapper around one (the aggregator) is one too.
* :class:`DispatchSettings`: the four limits a dispatcher works within.
* :func:`next_try_in`: the one rule for when a failed batch is sent again: the backoff,
  or as long as the server's ``Retry-After`` asks. No threads, no I/O.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable, Final, Protocol

from ..client.result import BatchFuture, BatchResult
from ..records import MetricBatch

if TYPE_CHECKING:
    from ..client.api import ApiClient

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "RETRY_AFTER_MAX",
    "Deliver",
    "DispatchSettings",
    "asked_to_wait",
    "deliver_to",
    "next_try_in",
]

BACKOFF_FIRST: Final = 0.1
"""Seconds before a failed batch is sent again the first time; doubled each time."""

BACKOFF_MAX: Final = 10.0
"""The longest wait between two sends of a failed batch."""

RETRY_AFTER_MAX: Final = 60.0
"""The longest wait before sending a failed batch again that a server's ``Retry-After`` can impose."""

Deliver = Callable[[MetricBatch], BatchFuture]
"""Sends one batch; the Future resolves to what was stored (``ApiClient.post_metrics``)."""


def deliver_to(client: ApiClient, run_id: int) -> Deliver:
    """The ``deliver`` for records of run ``run_id`` through ``client``: one attempt per
    call (``retry=False``), since the dispatcher decides when a batch is sent again."""
    return functools.partial(client.post_metrics, run_id, retry=False)


class DispatchSettings(Protocol):
    """The limits a dispatcher works within; the logger's settings
    (:class:`~mlbench_metrics.logger.settings.LoggerConfig`, which owns their defaults)
    and an agent's have them."""

    @property
    def batch_size(self) -> int:
        """Most records in one batch; also how many wake the thread early."""

    @property
    def flush_interval(self) -> float:
        """Seconds between deliveries when fewer records arrive."""

    @property
    def max_buffer(self) -> int:
        """Most records held in memory (buffered, waiting or in flight)."""

    @property
    def max_in_flight(self) -> int:
        """Batches sent and not answered yet, at most."""


def next_try_in(attempts: int, asked: float) -> float:
    """Seconds until a batch that failed ``attempts`` times is sent again: its backoff
    (doubling from :data:`BACKOFF_FIRST` to :data:`BACKOFF_MAX`), or ``asked`` (the
    server's ``Retry-After``, at most :data:`RETRY_AFTER_MAX`) when that is longer."""
    # 2**attempts, capped before it can overflow a float (a batch may fail for days)
    backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2.0 ** min(attempts - 1, 30))
    return max(backoff, min(asked, RETRY_AFTER_MAX))


def asked_to_wait(result: BatchResult) -> float:
    """The longest ``Retry-After`` among the errors of an answer, in seconds (0: none)."""
    waits = [e.retry_after for e in {id(e): e for e in result.failed.values()}.values() if e.retry_after]
    return max(waits, default=0.0)
