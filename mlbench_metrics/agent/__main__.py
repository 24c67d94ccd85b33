"""The delivery agent process: ``python -m mlbench_metrics.agent``.

Started by a training process's :class:`~mlbench_metrics.agent.AgentLink`, never by
hand: it reads its settings (one JSON line) from standard input, then watches the same
pipe: a byte is a poke (a flush is waiting), end of file means the trainer is gone.
It is in a session of its own and ignores SIGINT and SIGHUP, so a Ctrl-C to the
trainer, or its terminal closing, does not stop it before it has delivered; SIGTERM
makes it deliver what it can within ``shutdown_timeout`` and stop (the rest stays in
the log). It runs at a lower priority (:data:`NICE`) than the trainer. Its warnings go
to standard error (``agent.log`` in the writer directory) and, through the status area,
to the trainer's stderr. The exit status is one of ``core.EXIT_*``.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
from typing import Final

from .core import EXIT_BAD, AgentCore, NoticeHandler
from .settings import AgentSettings

NICE: Final = 5
"""How much the agent lowers its scheduling priority: where training keeps every core
busy, the agent gets about a quarter of the share a training process gets."""


class _StdinInbox:
    """The trainer's end of the pipe: pokes, and end of file when it is gone."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._gone = False
        self._poked = threading.Event()

    @property
    def gone(self) -> bool:
        return self._gone

    def wait(self, seconds: float) -> None:
        if self._gone:
            self._poked.wait(seconds)
            self._poked.clear()
            return
        ready, _, _ = select.select([self._fd], [], [], seconds)
        if ready:
            try:
                data = os.read(self._fd, 4096)
            except OSError:
                data = b""
            if not data:
                self._gone = True

    def poke(self) -> None:
        self._poked.set()


def _read_line(fd: int) -> bytes:
    """The first line on ``fd``, read without buffering past it."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


def main() -> int:
    """Run the agent; returns its exit status."""
    # A trainer's thread that starts an agent has SIGTERM and SIGINT blocked, and a child
    # inherits the mask: undo it, then choose what each signal does here.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        os.nice(NICE)  # delivery can wait a little (the records are on disk); training should not
    except OSError:
        pass
    logging.basicConfig(format=f"%(asctime)s mlbench-metrics agent[{os.getpid()}] %(message)s", level=logging.INFO)
    try:
        settings = AgentSettings.from_json(_read_line(0).decode())
    except ValueError as exc:
        logging.getLogger("mlbench_metrics").warning("mlbench-metrics: the agent cannot start: %s", exc)
        return EXIT_BAD
    client = settings.client()
    core = AgentCore(settings, client, _StdinInbox(0))
    logging.getLogger("mlbench_metrics").addHandler(NoticeHandler(core))
    # The client's close (aborting what still waits for an answer) is part of the time
    # SIGTERM gives: the core stops that much earlier.
    closing = min(1.0, 0.2 * settings.shutdown_timeout)
    signal.signal(signal.SIGTERM, lambda signum, frame: core.stop(settings.shutdown_timeout - closing))
    try:
        return core.run()
    finally:
        client.close(timeout=closing)


if __name__ == "__main__":
    sys.exit(main())
