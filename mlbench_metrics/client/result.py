"""What delivering a batch achieved, metric by metric, before and after it is done.

:class:`BatchResult` is the answer to one ``deliver`` call; :class:`BatchFuture` is the
Future of it that :meth:`ApiClient.post_metrics` returns and the dispatcher waits on. A
fan-out of single posts (a server without the batch endpoint) answers metric by metric,
so its future can say at any moment which metrics are stored already
(:meth:`BatchFuture.partial`): when ``close()`` runs out of time, only the rest is
spooled, and nothing answered 201 is ever sent again. A single post on the wire with no
answer yet is the one case nobody can decide (the dashboard has no idempotency key): it
is kept for ``sync``, which may store it a second time, and a warning says how many.
:class:`Gather` collects those single answers. No threads are started here; callbacks
run on the client's threads.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..errors import ApiError, TransientApiError

__all__ = ["BatchFuture", "BatchResult", "Gather"]

_log = logging.getLogger("mlbench_metrics")


@dataclass(frozen=True)
class BatchResult:
    """What :meth:`ApiClient.post_metrics` achieved.

    Attributes:
        total: metrics in the call.
        stored: metrics the server stored in this call (0 for a duplicate batch).
        duplicate: the server had stored this ``batch_id`` before: nothing was lost.
        failed: index of each metric that was not stored -> why.
        batch_id: the idempotency key the batch was sent with (None for single posts).
        kept: indices of the metrics a deliverer wrapping the client's settled by keeping
            them on disk instead of sending them as they are (the aggregator: the server
            stored aggregates of them). Neither stored nor failed; they count as spooled.
        stand_ins: how many points the server stored standing in for the ``kept`` ones.
    """

    total: int
    stored: int
    duplicate: bool = False
    failed: Mapping[int, ApiError] = field(default_factory=dict)
    batch_id: str | None = None
    kept: tuple[int, ...] = ()
    stand_ins: int = 0

    @property
    def ok(self) -> bool:
        """True when every metric is stored (now, or before as a duplicate), or kept."""
        return not self.failed

    @property
    def error(self) -> ApiError | None:
        """One of the errors (the first by index), or None."""
        return self.failed[min(self.failed)] if self.failed else None

    def retryable(self) -> list[int]:
        """Indices that failed for a reason that may pass (sending them later may work)."""
        return sorted(i for i, e in self.failed.items() if isinstance(e, TransientApiError))

    def rejected(self) -> list[int]:
        """Indices the server refused for good."""
        return sorted(i for i, e in self.failed.items() if not isinstance(e, TransientApiError))

    @classmethod
    def unanswered(cls, total: int, why: str, batch_id: str | None = None) -> BatchResult:
        """A result where no metric is known to be stored (all may be sent again)."""
        error = TransientApiError(why)
        return cls(total, 0, failed=dict.fromkeys(range(total), error), batch_id=batch_id)


class BatchFuture(Future[BatchResult]):
    """A Future of a :class:`BatchResult` that can tell what is stored before it is done.

    Args:
        total: metrics in the batch.
        batch_id: the idempotency key it is sent with, if any.
    """

    def __init__(self, total: int, batch_id: str | None = None) -> None:
        super().__init__()
        self.total = total
        self.batch_id = batch_id
        self._progress: Callable[[], BatchResult] | None = None
        self._abandon: Callable[[], None] | None = None
        self.set_running_or_notify_cancel()

    def track(self, progress: Callable[[], BatchResult], abandon: Callable[[], None] | None = None) -> None:
        """Use ``progress`` to answer :meth:`partial` until the result is set, and
        ``abandon`` to stop what has not started when the sender gives up."""
        self._progress = progress
        self._abandon = abandon

    def abandon(self) -> None:
        """Send nothing more for this batch: what has not started yet is not sent (and
        counts as failed); what is under way may still finish."""
        abandon = self._abandon
        if abandon is not None and not self.done():
            abandon()

    def partial(self) -> BatchResult:
        """The result so far: metrics answered as stored count, the others have failed
        (transiently, "no answer yet"). The final result once it is done."""
        if self.done():
            return self.result()
        progress = self._progress
        if progress is not None:
            return progress()
        return BatchResult.unanswered(self.total, "no answer yet", self.batch_id)


class Gather:
    """Collects the single posts of a fanned-out batch into its :class:`BatchFuture`.

    Args:
        outer: the future to resolve once every metric has its answer.
    """

    def __init__(self, outer: BatchFuture) -> None:
        self._outer = outer
        self._total = outer.total
        self._left = outer.total
        self._stored: set[int] = set()
        self._failed: dict[int, ApiError] = {}
        self._requests: list[Future[Any]] = []
        self._said = False  # the warning about posts with no answer, given once
        self._lock = threading.Lock()
        outer.track(self.partial, self.cancel_waiting)
        if not self._total:
            outer.set_result(BatchResult(0, 0))

    def sent(self, request: Future[Any]) -> None:
        """A single post under way (cancelled by :meth:`cancel_waiting` until it starts)."""
        with self._lock:
            self._requests.append(request)

    def cancel_waiting(self) -> None:
        """Cancel the single posts that have not started; each then fails as not sent."""
        with self._lock:
            requests = list(self._requests)
        for request in requests:
            request.cancel()

    def stored(self, index: int) -> None:
        """Metric ``index`` was answered 201."""
        with self._lock:
            self._stored.add(index)
        self._one_done()

    def failed(self, index: int, error: ApiError) -> None:
        """Metric ``index`` was not stored, because of ``error``."""
        with self._lock:
            self._failed[index] = error
        self._one_done()

    def partial(self) -> BatchResult:
        """Stored so far, and everything else as not stored (yet)."""
        with self._lock:
            failed: dict[int, ApiError] = dict(self._failed)
            stored = set(self._stored)
            on_the_wire = sum(1 for request in self._requests if request.running())
            say = on_the_wire and not self._said  # several deliveries may share one send
            self._said = self._said or bool(on_the_wire)
        if say:
            _log.warning(
                "mlbench-metrics: %d metrics were sent to a server without the batch endpoint and had no answer in "
                "time; they are kept for sync, which stores them a second time if the server did store them",
                on_the_wire,
            )
        waiting = TransientApiError("no answer before the deadline")
        for index in range(self._total):
            if index not in stored and index not in failed:
                failed[index] = waiting
        return BatchResult(self._total, len(stored), False, failed, None)

    def _one_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
            result = BatchResult(self._total, len(self._stored), False, dict(self._failed), None)
        if last:
            self._outer.set_result(result)
