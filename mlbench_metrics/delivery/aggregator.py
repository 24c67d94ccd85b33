"""The aggregator: a ``deliver`` that keeps a slow server's charts live.

A server without the batch endpoint (the dashboard) stores single posts, a few dozen a
second. :class:`Aggregator` wraps the client's ``post_metrics`` for such a server: the
dispatcher hands it batches as it would hand them to the client, and it sends them in
*sends*, one at a time, each taking everything that waits:

* raw, while the server keeps up (see :class:`~.pace.FoldPolicy`);
* folded, when it does not: per series, one aggregate point stands for many records
  (``fold.py``). Every batch's raw records are first copied to disk (``keep``), for an
  exact upload to a server with the batch endpoint later (``mlbench-metrics sync --to``);
  a batch whose copy could not be written is never folded.

One send at a time is what keeps the posts within the server's pace: while a send is
answered, the next batches wait and are folded together, so the slower the server, the
wider the windows. A raw send that turns out too slow is cut short (its posts not started
yet are cancelled, and folded in the next send).

The future of each batch answers per record: stored (sent raw), *kept* (folded: its
aggregate was stored, its raw copy is on disk, so the dispatcher counts it as spooled and
knows nothing of folding), or failed (the dispatcher sends it again later, or keeps it for
``sync``). Against a server with the batch
endpoint, or with ``aggregate="off"``, batches go straight to the client.

No threads: sends start on the dispatcher's thread (:meth:`Aggregator.__call__`,
:meth:`Aggregator.tick`) or on the client's, when a send is answered.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future
from typing import Callable, Iterator, Sequence

from ..client.result import BatchFuture, BatchResult
from ..errors import ApiError, ClientApiError, ClosedError, TransientApiError
from ..records import MetricBatch
from .fold import plan_fold, rows_of
from .pace import FoldPolicy
from .seam import Deliver

__all__ = ["Aggregator"]

_log = logging.getLogger("mlbench_metrics")

Slot = tuple["_Delivery", int]
"""A record: its batch's delivery, and its index in that batch."""


class _Delivery:
    """One batch the dispatcher handed over, and what became of each of its records."""

    __slots__ = (
        "abandoned",
        "aggregates",
        "asked",
        "batch",
        "failed",
        "folded",
        "keep",
        "outer",
        "retried",
        "staged",
        "stored",
        "todo",
    )

    def __init__(self, batch: MetricBatch, keep: bool) -> None:
        self.batch = batch
        self.keep = keep  # its raw copy is on disk: it may be folded
        self.asked = keep  # whether its copy was asked for
        self.outer = BatchFuture(len(batch), batch.batch_id)
        self.todo: list[int] = list(range(len(batch)))  # not in any send yet
        self.staged = 0  # records in the send under way
        self.stored: set[int] = set()
        self.folded: set[int] = set()
        self.failed: dict[int, ApiError] = {}
        self.aggregates = 0
        self.retried: set[int] = set()  # taken back once from a send cut short
        self.abandoned = False

    def done(self) -> bool:
        return not self.todo and not self.staged

    def result(self, extra: Sequence[tuple[int, str, ApiError | None]] = ()) -> BatchResult:
        stored, folded, failed = set(self.stored), set(self.folded), dict(self.failed)
        for i, kind, error in extra:
            if kind == "stored":
                stored.add(i)
            elif kind == "folded":
                folded.add(i)
            elif error is not None:
                failed[i] = error
        waiting = TransientApiError("not sent yet")
        for i in range(len(self.batch)):
            if i not in stored and i not in folded and i not in failed:
                failed[i] = waiting
        return BatchResult(
            len(self.batch),
            len(stored),
            failed=failed,
            batch_id=self.batch.batch_id,
            kept=tuple(sorted(folded)),  # their raw copies are on disk: settled, as spooled
            stand_ins=self.aggregates,
        )


class _Send:
    """Records and aggregate points sent as one call of the client's ``post_metrics``."""

    __slots__ = ("batch", "folds", "groups", "inner", "preempted", "raw", "started")

    def __init__(self, raw: list[Slot], groups: list[list[Slot]], batch: MetricBatch, started: float) -> None:
        self.raw = raw  # the batch's first len(raw) metrics, as they were logged
        self.groups = groups  # then one aggregate point per group
        self.batch = batch
        self.folds = bool(groups)
        self.started = started
        self.inner: BatchFuture | None = None
        self.preempted = False

    def outcomes(self, result: BatchResult) -> Iterator[tuple[_Delivery, int, str, ApiError | None]]:
        """Each record's fate in ``result``: ``"stored"``, ``"folded"`` or ``"failed"``."""
        for j, (delivery, i) in enumerate(self.raw):
            error = result.failed.get(j)
            yield delivery, i, "stored" if error is None else "failed", error
        base = len(self.raw)
        for k, members in enumerate(self.groups):
            error = result.failed.get(base + k)
            for delivery, i in members:
                yield delivery, i, "folded" if error is None else "failed", error


class Aggregator:
    """Sends what the dispatcher hands it raw, or folded when the server falls behind.

    Example::

        aggregator = Aggregator(
            deliver_to(client, run_id),
            FoldPolicy("auto"),
            batch_supported=lambda: client.batch_supported,
            keep=raw_copies.keep_one,
        )
        dispatcher = start_dispatcher(aggregator, store, settings, on_drained=aggregator.tick)

    Args:
        deliver: the client's ``post_metrics`` for the run.
        policy: when to fold, and into which windows.
        batch_supported: whether the server has the batch endpoint (None: not known yet).
        keep: copies a batch's raw records to disk (once, whatever it is asked); True
            when they are there. Asked once the server is known to lack the batch
            endpoint; only batches copied are folded.
        on_fold: called once, before the first send with aggregates is built.
        clock: monotonic seconds, for how long sends take.
    """

    def __init__(
        self,
        deliver: Deliver,
        policy: FoldPolicy,
        *,
        batch_supported: Callable[[], bool | None],
        keep: Callable[[MetricBatch], bool],
        on_fold: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._deliver = deliver
        self._policy = policy
        self._batch_supported = batch_supported
        self._keep = keep
        self._on_fold = on_fold
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: list[_Delivery] = []  # handed over, with records in no send yet
        self._open: list[_Delivery] = []  # handed over, not answered yet
        self._send: _Send | None = None
        self._folded = 0
        self._said = False

    @property
    def folded(self) -> int:
        """Records folded into aggregate points the server stored, so far."""
        return self._folded

    def __call__(self, batch: MetricBatch) -> BatchFuture:
        """Send ``batch`` (now, or with the next send); the future answers per record."""
        if self._policy.off or self._batch_supported() is True:
            return self._deliver(batch)
        delivery = _Delivery(batch, self._batch_supported() is False and self._keep(batch))
        delivery.asked = delivery.keep or self._batch_supported() is False
        delivery.outer.track(functools.partial(self._partial, delivery), functools.partial(self._abandon, delivery))
        with self._lock:
            self._waiting.append(delivery)
            self._open.append(delivery)
        self._pump()
        return delivery.outer

    def tick(self) -> None:
        """Look again (the dispatcher calls this about every ``flush_interval``): cut a
        raw send short when the server has fallen behind."""
        self._pump()

    # -- sends ---------------------------------------------------------------------------

    def _pump(self) -> None:
        while True:
            with self._lock:
                cut_short = self._preempt() if self._send is not None else None
                send = self._next_send() if self._send is None else None
                finished = self._take_finished()
            if cut_short is not None:
                cut_short.abandon()
            self._resolve(finished)
            if send is None or self._start(send):
                return

    def _next_send(self) -> _Send | None:
        """Under the lock: the next send, from everything waiting (None: nothing waits)."""
        waiting = self._waiting
        for delivery in [d for d in waiting if d.abandoned]:
            waiting.remove(delivery)
        if not waiting:
            return None
        now = self._clock()
        if self._batch_supported() is not False:  # not known yet: each batch whole, with its id
            taken = [waiting.pop(0)]
            send = _Send(*_raw(taken), now)
        else:
            taken = list(waiting)
            waiting.clear()
            slots = [(d, i) for d in taken for i in d.todo]
            newest = max(d.batch.dates_us[i] for d, i in slots) / 1e6
            keepable = [d for d in taken if self._kept(d)]
            if keepable and self._policy.fold(len(slots), newest):
                send = self._folding(taken, keepable, now)
            else:
                send = _Send(*_raw(taken), now)
        for delivery in taken:
            delivery.staged, delivery.todo = len(delivery.todo), []
        self._send = send
        return send

    def _folding(self, waiting: list[_Delivery], keepable: list[_Delivery], now: float) -> _Send:
        raw: list[Slot] = [(d, i) for d in waiting if not d.keep for i in d.todo]
        slots = [(d, i) for d in keepable for i in d.todo]
        rows = [row for d in keepable for row in rows_of(d.batch, d.todo)]
        plan = plan_fold(rows, self._policy.window_us)
        raw += [slots[j] for j in plan.raw]
        batch = _subset(raw)
        for row in plan.points.rows():
            batch.append(*row)
        if not self._said and plan.groups:
            self._said = True
            if self._on_fold is not None:
                self._on_fold()
            _log.warning(
                "mlbench-metrics: the server stores about %.0f metrics/s, fewer than are logged: sending per-series "
                "aggregates to keep its charts live; the raw records are kept for `mlbench-metrics sync --to URL`",
                self._policy.pace,
            )
        return _Send(raw, [[slots[j] for j in group] for group in plan.groups], batch, now)

    def _start(self, send: _Send) -> bool:
        """Hand the send to the client; False when it failed at once (and is settled)."""
        try:
            inner = self._deliver(send.batch)
        except Exception as exc:
            kind = TransientApiError if isinstance(exc, ClosedError) else ClientApiError
            error = kind(f"not sent: {type(exc).__name__}: {exc}")
            self._settle(send, BatchResult(len(send.batch), 0, failed=dict.fromkeys(range(len(send.batch)), error)))
            return False
        with self._lock:
            send.inner = inner
        inner.add_done_callback(functools.partial(self._answered, send))
        return True

    def _answered(self, send: _Send, future: Future[BatchResult]) -> None:
        """Runs on a client thread (or at once): settle the send, start the next one."""
        try:
            result = future.result()
        except BaseException as exc:
            result = BatchResult.unanswered(len(send.batch), f"{type(exc).__name__}: {exc}")
        self._settle(send, result)
        self._pump()

    def _settle(self, send: _Send, result: BatchResult) -> None:
        seconds = self._clock() - send.started
        with self._lock:
            if self._send is send:
                self._send = None
            self._policy.observe(result.stored + len(result.rejected()), seconds)
            for delivery, i, kind, error in send.outcomes(result):
                delivery.staged -= 1
                if kind == "stored":
                    delivery.stored.add(i)
                elif kind == "folded":
                    delivery.folded.add(i)
                    self._folded += 1
                elif send.preempted and isinstance(error, TransientApiError) and i not in delivery.retried:
                    if delivery.abandoned:
                        delivery.failed[i] = error
                    else:  # cut short: folded with what waits, once
                        delivery.retried.add(i)
                        delivery.todo.append(i)
                elif error is not None:
                    delivery.failed[i] = error
            base = len(send.raw)
            for k, members in enumerate(send.groups):
                if base + k not in result.failed:
                    members[0][0].aggregates += 1
            for delivery in {d for d, _ in send.raw}:
                # Sent before the server was known to lack the batch endpoint: copied now,
                # so an upload with `sync --to` has it too, whatever is folded later.
                self._kept(delivery)
                if delivery.todo and delivery not in self._waiting and not delivery.abandoned:
                    self._waiting.insert(0, delivery)

    def _kept(self, delivery: _Delivery) -> bool:
        """Under the lock: whether ``delivery``'s raw copy is on disk; asks for it once the
        server is known to lack the batch endpoint (a batch sent before anyone knew)."""
        if not delivery.asked and self._batch_supported() is False:
            delivery.asked = True
            delivery.keep = self._keep(delivery.batch)
        return delivery.keep

    def _preempt(self) -> BatchFuture | None:
        """Under the lock: the raw send under way, when it must be cut short."""
        send = self._send
        if send is None or send.folds or send.preempted or send.inner is None:
            return None
        if self._batch_supported() is not False:
            return None
        if not any(self._kept(d) for d in {d for d, _ in send.raw}):
            return None
        waiting = sum(len(d.todo) for d in self._waiting)
        dates = [d.batch.dates_us[i] for d in self._waiting for i in d.todo[-1:]]
        newest = max(dates, default=send.batch.dates_us[-1] if len(send.batch) else 0) / 1e6
        remaining = self._policy.remaining(len(send.batch), self._clock() - send.started)
        if not self._policy.fold(remaining + waiting, newest):
            return None
        send.preempted = True
        return send.inner

    # -- the dispatcher's futures ------------------------------------------------------------

    def _take_finished(self) -> list[_Delivery]:
        finished = [d for d in self._open if d.done()]
        for delivery in finished:
            self._open.remove(delivery)
        return finished

    @staticmethod
    def _resolve(finished: list[_Delivery]) -> None:
        for delivery in finished:
            if not delivery.outer.done():
                delivery.outer.set_result(delivery.result())

    def _partial(self, delivery: _Delivery) -> BatchResult:
        """What is settled of ``delivery`` so far, the send under way included."""
        with self._lock:
            send = self._send
            inner = send.inner if send is not None and delivery.staged else None
            if inner is None or send is None:
                return delivery.result()
            progress = inner.partial()
            mine = [(i, kind, error) for d, i, kind, error in send.outcomes(progress) if d is delivery]
            return delivery.result(mine)

    def _abandon(self, delivery: _Delivery) -> None:
        """The dispatcher gives up waiting (at close): send nothing more for ``delivery``."""
        with self._lock:
            delivery.abandoned = True
            error = TransientApiError("not sent: the logger was closing")
            for i in delivery.todo:
                delivery.failed[i] = error
            delivery.todo = []
            if delivery in self._waiting:
                self._waiting.remove(delivery)
            send = self._send
            inner = send.inner if send is not None and delivery.staged else None
            finished = self._take_finished()
        if inner is not None:
            inner.abandon()
        self._resolve(finished)


def _raw(deliveries: list[_Delivery]) -> tuple[list[Slot], list[list[Slot]], MetricBatch]:
    """A raw send of what ``deliveries`` have to send: a batch as it came when it is whole
    (its id kept, for a server with the batch endpoint), else the records picked out."""
    slots = [(d, i) for d in deliveries for i in d.todo]
    only = deliveries[0]
    whole = len(deliveries) == 1 and only.todo == list(range(len(only.batch)))
    return slots, [], only.batch if whole else _subset(slots)


def _subset(slots: list[Slot]) -> MetricBatch:
    """The records at ``slots`` as one batch, in that order."""
    out = MetricBatch()
    texts: dict[int, list[str]] = {}
    for delivery, i in slots:
        batch = delivery.batch
        metadata = texts.get(id(batch))
        if metadata is None:
            metadata = texts[id(batch)] = batch.metadata_texts()
        out.append(batch.names[i], batch.values[i], batch.dates_us[i], metadata[i], batch.cumulative[i])
    return out
