"""``serve --workers N``: N server processes on one port, owned by one parent.

The parent binds the port once and passes the listening socket to N children
(``python -m mlbench_metrics.server --listen-fd FD ...``), each its own interpreter, so
N cores. The kernel hands each new connection to one child that is waiting in
``accept``. The children keep nothing between requests that another would need: the
database holds every fact (batch ids make a retried batch count once whichever child
gets it; live pages read what any child stored; a run is created, and with ``--exec``
started, by the one child that got its request). So any child may answer any request,
and one that dies loses only the requests it was answering, which clients retry.

The parent starts the children and waits until each listens; when one dies it starts
another on the same socket, unless children keep dying (more than ``max_restarts``
within ``restart_window`` seconds), when it stops them all and exits with a message
saying so. SIGTERM or SIGINT to the parent stop every child (SIGTERM, then SIGKILL after
a grace period); children exit by themselves when the parent is gone
(``--exit-with-parent``).

Threads: each child's stdout is read by one ``mlbench-worker-stdout`` thread (the ready
line, then drained so the child never blocks on a full pipe); they end with the pipe.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Final

from .._threads import start_thread

__all__ = ["Supervisor", "WorkersFailed"]

_log = logging.getLogger("mlbench_metrics.server")
_READY_PREFIX: Final = "mlbench-metrics server listening on "


class WorkersFailed(RuntimeError):
    """The server processes could not be started, or kept dying."""


class _Child:
    def __init__(self, index: int, proc: subprocess.Popen[str]) -> None:
        self.index = index
        self.proc = proc
        self.ready = threading.Event()
        self.reader: threading.Thread | None = None


class Supervisor:
    """N server processes sharing ``sock`` (see the module).

    Args:
        sock: a bound, listening socket; the children accept on it.
        child_args: the ``serve`` arguments every child gets (besides ``--listen-fd``).
        workers: how many children.
        env: more environment for the children (a token, say: not on their command line).
        startup_timeout: seconds each child may take to listen.
        max_restarts, restart_window: give up when more children than this died within
            that many seconds.
    """

    def __init__(
        self,
        sock: socket.socket,
        child_args: Sequence[str],
        workers: int,
        *,
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.sock = sock
        self.workers = workers
        self._args = list(child_args)
        self._env = {**os.environ, **(env or {})}
        self._startup_timeout = startup_timeout
        self._max_restarts = max_restarts
        self._window = restart_window
        self._children: list[_Child] = []
        self._deaths: deque[float] = deque()
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        """The children's pids."""
        return [c.proc.pid for c in self._children]

    def start(self) -> None:
        """Start every child and wait until each listens.

        Raises:
            WorkersFailed: a child did not start (the others are stopped).
        """
        os.set_inheritable(self.sock.fileno(), True)
        try:
            for index in range(self.workers):
                self._children.append(self._spawn(index))
            for child in self._children:
                self._wait_ready(child)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, index: int) -> _Child:
        fd = self.sock.fileno()
        cmd = [sys.executable, "-m", "mlbench_metrics.server", "--listen-fd", str(fd), *self._args]
        cmd.append("--exit-with-parent")
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=None, text=True, bufsize=1, pass_fds=(fd,), env=self._env
        )
        child = _Child(index, proc)
        child.reader = start_thread(self._read_stdout, "mlbench-worker-stdout", args=(child,))
        return child

    @staticmethod
    def _read_stdout(child: _Child) -> None:
        stream = child.proc.stdout
        if stream is None:
            return
        try:
            for line in stream:
                if line.startswith(_READY_PREFIX):
                    child.ready.set()
        except (OSError, ValueError):
            pass

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + self._startup_timeout
        while not child.ready.wait(0.1):
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise WorkersFailed(
                    f"server process {child.index} did not start (exit code {child.proc.poll()}); its error is above"
                )

    def check(self) -> None:
        """Start another child for each that died since the last check (call it often).

        Raises:
            WorkersFailed: children kept dying; every child is stopped.
        """
        for position, child in enumerate(self._children):
            code = child.proc.poll()
            if code is None:
                continue
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > self._window:
                self._deaths.popleft()
            if len(self._deaths) > self._max_restarts:
                self.stop()
                raise WorkersFailed(
                    f"server processes keep dying ({len(self._deaths)} in {self._window:.0f} s, the last with "
                    f"exit code {code}); stopping. Their errors are above."
                )
            _log.warning(
                "server process %d (pid %d) died with exit code %s; starting another", child.index, child.proc.pid, code
            )
            self._retire(child)
            replacement = self._spawn(child.index)
            self._children[position] = replacement
            self.restarts += 1
            try:
                self._wait_ready(replacement)
            except WorkersFailed:
                continue  # counted as a death on the next check

    @staticmethod
    def _retire(child: _Child, timeout: float = 1.0) -> None:
        """Reap an exited child's stdout reader and close the pipe."""
        if child.reader is not None:
            child.reader.join(timeout)  # the pipe ends with the child
        if child.proc.stdout is not None and (child.reader is None or not child.reader.is_alive()):
            child.proc.stdout.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child, SIGKILL what is left after ``timeout``; reap them all. Idempotent."""
        for child in self._children:
            if child.proc.poll() is None:
                try:
                    child.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for child in self._children:
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
            self._retire(child)
