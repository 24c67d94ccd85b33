"""A logger's signs of life, so that its run's state can be trusted: started, finished, failed, crashed.

A logger is one *writer* of its run. Against the embedded server (its ``writers``
extension) every batch carries the writer's id and rank, which the server takes as a
sign of life; when nothing was sent for the heartbeat interval the server names, the
dispatcher's tick sends a tiny heartbeat instead; ``close()`` says whether the writer
ended cleanly or failed. The server derives the run's state from its writers (see
``mlbench_metrics.server.run_states``): finished when every writer that announced itself
closed cleanly, failed when one failed, crashed while an open one stays silent.

Against a server without the extension (the dashboard) nothing is added: the batch
carries no writer, and the only question, which extensions the server has, is the one
the client asks anyway before its first batch (and is asked only after a delivery).

The first answer may say that an older live writer of the run has the same rank: their
points would merge into one series. The server tells only the newer writer, and this
logger warns once, naming the fix (``rank=``). Only the server can see two processes, so
it is the one to detect it.

No threads of its own: reports go through the client's pool; :meth:`Liveness.tick` runs
on the dispatcher's thread and never waits.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Final

from ..client.api import ApiClient
from ..client.result import BatchFuture
from ..records import MetricBatch

__all__ = ["Liveness", "writer_id"]

_log = logging.getLogger("mlbench_metrics")

_FIRST_HEARTBEAT: Final = 15.0  # seconds, until the server says its own


def writer_id() -> str:
    """A new writer id: this host and process, and a random part (a logger is one writer)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:32] or "host"
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class Liveness:
    """One logger's writer: delivers its batches with the writer attached, beats when idle, reports the end.

    Args:
        client: the logger's client.
        run_id: the run.
        rank: the logger's rank (None: none).
        clock: monotonic seconds.
    """

    def __init__(
        self, client: ApiClient, run_id: int, rank: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.writer = writer_id()
        self._client = client
        self._run_id = run_id
        self._rank = rank
        self._clock = clock
        self._post = functools.partial(
            client.post_metrics, run_id, writer={"id": self.writer, "rank": rank}, retry=False
        )
        self._lock = threading.Lock()
        self._sent_at: float | None = None  # last batch or report sent (None: nothing yet)
        self._heartbeat = _FIRST_HEARTBEAT
        self._pending: Future[dict[str, Any] | None] | None = None
        self._announced = False
        self.supported: bool | None = None  # whether the server takes writers (None: not known yet)
        self.conflict: str | None = None

    def deliver(self, batch: MetricBatch) -> BatchFuture:
        """``ApiClient.post_metrics`` for the run, carrying the writer (a sign of life); one
        attempt per call, as :func:`~mlbench_metrics.delivery.deliver_to`: the dispatcher retries."""
        self._sent_at = self._clock()
        return self._post(batch)

    def tick(self) -> None:
        """The dispatcher's interval tick: announce once, then beat when nothing was sent for a while."""
        if self.supported is False or self._sent_at is None:
            return  # not a server with writers, or nothing delivered yet (the dashboard is never asked)
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return
            if self._announced and self._clock() - self._sent_at < self._heartbeat:
                return
            self._sent_at = self._clock()
            try:
                self._pending = self._client.report_writer(self._run_id, self.writer, rank=self._rank)
            except Exception as exc:  # the client is closed or closing: the logger is ending
                _log.debug("mlbench-metrics: no heartbeat sent: %s", exc)
                return
        self._pending.add_done_callback(self._answered)

    def close(self, failed: bool, timeout: float) -> bool:
        """Say that the writer ended (cleanly or ``failed``); True when the server took it.

        False, at once, when the server has no writers or this logger sent nothing (then
        the caller marks a run it created as before), and when no answer came in
        ``timeout`` seconds or the report failed (said in a warning).
        """
        if self.supported is False or (self._sent_at is None and not self._announced):
            return False
        if timeout <= 0:
            _log.warning("mlbench-metrics: no time was left to tell the server that run %s ended", self._run_id)
            return False
        state = "failed" if failed else "closed"
        try:
            answer = self._client.report_writer(self._run_id, self.writer, rank=self._rank, state=state)
            result = answer.result(timeout)
        except Exception as exc:  # closing must not raise: say it and go on
            _log.warning(
                "mlbench-metrics: could not tell the server that run %s ended (%s): %s", self._run_id, state, exc
            )
            return False
        if result is None:
            self.supported = False
            return False
        self._take(result)
        return True

    def _answered(self, future: Future[dict[str, Any] | None]) -> None:
        try:
            result = future.result()
        except Exception as exc:  # tried again at the next tick
            _log.debug("mlbench-metrics: a heartbeat failed: %s", exc)
            return
        if result is None:
            self.supported = False
            return
        self._take(result)

    def _take(self, answer: dict[str, Any]) -> None:
        self.supported = True
        self._announced = True
        beat = answer.get("heartbeat_s")
        if isinstance(beat, (int, float)) and beat > 0:
            self._heartbeat = float(beat)
        conflict = answer.get("conflict")
        if isinstance(conflict, str) and self.conflict is None:
            self.conflict = conflict
            _log.warning("mlbench-metrics: run %s: %s", self._run_id, conflict)
