"""The agent's work: tail a training process's durable log, deliver it, say how far it got.

:class:`AgentCore` runs the same :class:`~mlbench_metrics.delivery.Dispatcher` a logger
runs in its own process, over a :class:`~mlbench_metrics.spool.durable.tail.TailStore`:
its loop queues the slots the trainer has written, asks the dispatcher to take them
now when the trainer flushes (a word in the status area, and a byte on a pipe to wake
it), moves the delivered watermark and publishes its counts in the status area. When
the trainer is gone (it closed, or died), it delivers what is left and stops: at once
when everything is delivered (the directory is removed then), or once ``settings.linger``
seconds pass without progress (the log stays for the next agent or ``sync``).

Counts survive an agent that dies: they are published in the status area before each
range is marked delivered, with the range as *pending*; the next agent marks a pending
range that was counted and not marked, so nothing is counted twice or sent twice.

Threads: the dispatcher's (``mlbench-dispatcher``), and ``mlbench-adopt`` while
directories left by dead processes of the run are delivered. The loop runs in the
caller's thread: the agent process's main thread, or a thread of the training process
when no agent process could start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Final, Protocol

from .._threads import start_thread
from ..client.api import ApiClient
from ..delivery import Dispatcher, Stats, deliver_to, start_dispatcher
from ..errors import SpoolError
from ..spool.durable.status import AgentReport, StatusArea
from ..spool.durable.tail import TailLog, TailStore
from ..spool.files import remove_writer_dir, try_lock
from .adopt import adopt, orphans
from .settings import AgentSettings

__all__ = ["EXIT_BAD", "EXIT_BUSY", "EXIT_DONE", "EXIT_LEFT", "AgentCore", "Inbox", "NoticeHandler"]

_log = logging.getLogger("mlbench_metrics")

EXIT_DONE: Final = 0
"""Everything is delivered; the directory is removed."""
EXIT_BAD: Final = 2
"""The settings or the log could not be read."""
EXIT_LEFT: Final = 3
"""Records are left in the log, for the next agent or ``sync``."""
EXIT_BUSY: Final = 4
"""Another agent delivers this log."""

_MIN_TICK: Final = 0.002
_MAX_TICK: Final = 0.1


class Inbox(Protocol):
    """How the trainer reaches the agent: a wake-up, and whether it is gone."""

    @property
    def gone(self) -> bool:
        """The trainer will write nothing more (it closed its end, or died)."""

    def wait(self, seconds: float) -> None:
        """Return after ``seconds``, or sooner when the trainer pokes."""

    def poke(self) -> None:
        """Cut the current wait short (from another thread, or a signal handler)."""


class AgentCore:
    """Delivers one writer directory's log; :meth:`run` returns an exit code.

    Args:
        settings: where the log is, and how to deliver.
        client: delivers (the agent closes it after :meth:`run`, not this class).
        inbox: the trainer's pokes, and whether it is gone.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        settings: AgentSettings,
        client: ApiClient,
        inbox: Inbox,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.path = Path(settings.path)
        self._client = client
        self._inbox = inbox
        self._clock = clock
        self._stop_by: float | None = None
        self._publishing = threading.Lock()
        self._status: StatusArea | None = None
        self._store: TailStore | None = None
        self._dispatcher: Dispatcher | None = None
        self._base = AgentReport()
        self._counted = Stats(0, 0, 0, {}, 0, 0, 0, None)  # at the last settle: counts to publish
        self._generation = 0
        self._stop_adopting = threading.Event()
        self._adopter: threading.Thread | None = None

    def stop(self, timeout: float) -> None:
        """Finish within ``timeout`` seconds (SIGTERM; or the trainer closing, when the
        agent runs in its process): what is not delivered by then stays in the log."""
        self._stop_by = self._clock() + max(0.0, timeout)
        self._inbox.poke()

    def notice(self, text: str) -> None:
        """Pass a warning on to the trainer (it repeats it on its stderr)."""
        status = self._status
        if status is not None:
            status.notice(text)

    # -- the run --------------------------------------------------------------------------

    def run(self) -> int:
        """Deliver until the trainer is gone and everything is delivered, or until time
        runs out; returns :data:`EXIT_DONE`, :data:`EXIT_LEFT`, :data:`EXIT_BUSY` or
        :data:`EXIT_BAD`."""
        try:
            lock = try_lock(self.path / "agent.lock", create=True)
        except OSError as exc:
            _log.warning("mlbench-metrics: the agent cannot deliver %s: %s", self.path, exc)
            return EXIT_BAD
        if lock is None:
            _log.warning("mlbench-metrics: another agent delivers %s", self.path)
            return EXIT_BUSY
        try:
            try:
                self._status = status = StatusArea(self.path / "status.bin")
                self._base = status.read()
                log = TailLog(self.path)
            except SpoolError as exc:
                _log.warning("mlbench-metrics: the agent cannot deliver %s: %s", self.path, exc)
                return EXIT_BAD
            self._generation = self._base.generation + 1
            self._store = store = TailStore(
                log,
                f"agent-{uuid.uuid4().hex}",
                pending=self._base.pending,
                on_settle=self._settling,
                clock=self._clock,
            )
            settings = self.settings
            self._dispatcher = start_dispatcher(deliver_to(self._client, settings.run_id), store, settings)
            self._publish()
            if settings.adopt:
                self._adopter = start_thread(self._adopt, "mlbench-adopt")
            done = self._loop(store, self._dispatcher, status)
            return self._finish(done)
        finally:
            os.close(lock)

    def _loop(self, store: TailStore, dispatcher: Dispatcher, status: StatusArea) -> bool:
        """Deliver until done (True) or out of time (False)."""
        settings = self.settings
        tick = _MIN_TICK
        taken_upto = 0  # the slot up to which the dispatcher was last asked to take now
        gone_since: float | None = None
        fed_at = self._clock()
        progress = (-1, -1)  # (settled below, records stored): when it last moved
        while True:
            flush_upto, end, closed = status.trainer()
            final = closed or self._inbox.gone
            room = settings.max_buffer - (store.cursor - store.settled_below())
            queued = store.feed(max(0, room), final=final, end=end)
            want = max(flush_upto, store.cursor if final and store.exhausted else 0)
            if want > taken_upto and store.cursor >= want:
                dispatcher.flush(0)  # a flush marker: take the buffer now, whatever it holds
                taken_upto = store.cursor
            elif len(store.buffer) >= settings.batch_size:
                dispatcher.wake()
            store.log.set_watermark(store.settled_below())
            self._publish()
            now = self._clock()
            if final:
                stats = dispatcher.stats()
                if (store.settled_below(), stats.stored) != progress or gone_since is None:
                    progress, gone_since = (store.settled_below(), stats.stored), now
                adopting = self._adopter is not None and self._adopter.is_alive()
                if store.exhausted and stats.pending == 0 and not adopting:
                    return True
                if now - gone_since >= settings.linger:  # the trainer is gone and nothing moves
                    _log.warning(
                        "mlbench-metrics: the agent gives up after %.0f s without progress; the rest stays in %s",
                        settings.linger,
                        self.path,
                    )
                    return False
            if self._stop_by is not None and now >= self._stop_by - min(1.0, 0.25 * settings.shutdown_timeout):
                return False
            tick = self._next_tick(tick, queued, now - fed_at)
            fed_at = now
            self._inbox.wait(tick)

    def _next_tick(self, tick: float, queued: int, elapsed: float) -> float:
        """How long to wait before looking at the log again: about the time half a batch
        takes to arrive at the rate just seen (a wake-up costs the machine a little; the
        dispatcher only sends full batches, or every ``flush_interval``), longer while
        nothing comes; a flush pokes the loop at once anyway."""
        longest = min(_MAX_TICK, self.settings.flush_interval / 4)
        if not queued:
            return min(2 * tick, longest)
        rate = queued / max(elapsed, 1e-6)
        return max(_MIN_TICK, min(longest, self.settings.batch_size / rate / 2))

    def _finish(self, done: bool) -> int:
        """Stop the dispatcher (leaving what it did not deliver in the log), say so, and
        remove the directory when everything in it is delivered."""
        assert self._store is not None and self._dispatcher is not None and self._status is not None
        store, dispatcher = self._store, self._dispatcher
        self._stop_adopting.set()
        deadline = self._stop_by if self._stop_by is not None else self._clock() + self.settings.shutdown_timeout
        if self._adopter is not None:
            self._adopter.join(max(0.0, deadline - self._clock()) / 2)
        # Done: nothing is left to send, the thread only has to end.
        dispatcher.close(1.0 if done else max(0.0, deadline - self._clock()))
        stats = dispatcher.stats()
        with self._publishing:
            self._counted = stats
        self._publish()
        done = done and stats.pending == 0 and store.exhausted
        self._status.close()
        if done:
            remove_writer_dir(self.path)
            return EXIT_DONE
        return EXIT_LEFT

    # -- counts -----------------------------------------------------------------------------

    def _settling(self, span: tuple[int, int] | None) -> None:
        """Called by the store before a range is marked delivered (with the range: its
        records are counted now), and after (None)."""
        assert self._dispatcher is not None
        if span is not None:
            with self._publishing:
                self._counted = self._dispatcher.stats()
        self._publish(span)

    def _publish(self, pending: tuple[int, int] | None = None) -> None:
        """Write the counts to the status area. Stored and dropped are those taken when a
        range was last settled: a range counted and not yet marked is published only as
        ``pending``, so an agent taking over never counts it twice."""
        store, dispatcher, status = self._store, self._dispatcher, self._status
        if store is None or dispatcher is None or status is None:
            return
        with self._publishing:
            now = dispatcher.stats()
            counted, base = self._counted, self._base
            dropped = dict(base.dropped)
            for reason, n in counted.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + n
            status.publish(
                AgentReport(
                    pid=os.getpid(),
                    generation=self._generation,
                    watermark=store.settled_below(),
                    stored=base.stored + counted.stored,
                    retried=base.retried + now.retried,
                    in_flight=now.in_flight,
                    skipped=base.skipped + store.skipped,
                    dropped=dropped,
                    error=now.last_error or base.error,
                    pending=pending,
                )
            )

    # -- orphans ----------------------------------------------------------------------------

    def _adopt(self) -> None:
        try:
            found = orphans(self.path, self._client.endpoint)
            adopt(found, self._client, self.settings.batch_size, self._stop_adopting)
        except Exception:  # never let the thread die silently
            _log.exception("mlbench-metrics: delivering what earlier processes left failed")


class NoticeHandler(logging.Handler):
    """Passes the agent's warnings on to its trainer through the status area.

    Args:
        core: the agent whose trainer is told.
    """

    def __init__(self, core: AgentCore) -> None:
        super().__init__(logging.WARNING)
        self._core = core

    def emit(self, record: logging.LogRecord) -> None:
        """Leave the message for the trainer."""
        try:
            self._core.notice(record.getMessage())
        except Exception:
            self.handleError(record)
