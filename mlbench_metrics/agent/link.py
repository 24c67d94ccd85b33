"""The training process's side of process delivery: start the agent, watch it, read it.

With ``delivery="process"`` the logger's hot path only writes the durable log; an
:class:`AgentLink` stands where the dispatcher would be (``flush``, ``close``,
``stats``) and talks to the agent through the status area and a pipe:

* it starts ``python -m mlbench_metrics.agent`` in a session of its own (a Ctrl-C to the
  trainer's process group does not reach it, and it outlives the trainer), writes the
  settings on its standard input and keeps the pipe open: end of file is how the agent
  learns the trainer is gone, whichever way it went;
* ``flush`` and ``close`` write how far they need delivery in the status area, poke the
  agent (a byte on the pipe) and watch its delivered watermark;
* the ``mlbench-agent-watch`` thread wakes every ``flush_interval``: it starts another
  agent when the last one ended (the new one goes on from the log's marks), repeats the
  agent's warnings on this process's stderr, and reserves the log's next segment ahead
  of the writer;
* when no agent can start (three that ended before they were ready, or no way to start
  a process), the same agent code runs in a thread here (``mlbench-agent``), with one
  warning: records are delivered as with ``delivery="thread"``, never lost;
* when the log freezes (a full disk), the records that follow are kept in memory, where
  no agent can read them: a :class:`~mlbench_metrics.delivery.Dispatcher` here delivers
  those, as a logger without durability would.

Threads: ``mlbench-agent-watch``; ``mlbench-dispatcher`` once the log froze;
``mlbench-agent`` (and its dispatcher) when no agent process could start.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable, Final

from .. import _lifecycle
from .._threads import start_thread
from ..client.api import ApiClient
from ..delivery import Dispatcher, MemoryStore, Stats, start_dispatcher
from ..delivery.seam import Deliver
from ..logger.settings import LoggerConfig
from ..spool import DurableStore
from ..spool.durable.status import AgentReport, StatusArea
from .core import AgentCore
from .settings import AgentSettings

__all__ = ["START_TIMEOUT", "STOPPED_GRACE", "AgentLink", "agent_bootstrap"]

_log = logging.getLogger("mlbench_metrics")

START_TIMEOUT: Final = 30.0
"""Seconds an agent may take to become ready before it is given up (and killed)."""

STOPPED_GRACE: Final = 5.0
"""Seconds an agent may stay stopped (SIGSTOP, a debugger) before it is replaced: a
stopped agent delivers nothing, and holds its lock so that nothing else can."""

_TRIES: Final = 3  # agents that ended before they were ready, in a row, before delivering from here
_PACKAGE_ROOT: Final = str(Path(__file__).resolve().parent.parent.parent)

# Agents this process started, kept until they end: an agent outlives its link (it goes on
# delivering after close), and one that ends while this process lives is reaped here, not
# left a zombie (nor reported by Popen.__del__ as still running).
_started: list[subprocess.Popen[bytes]] = []
_started_lock = threading.Lock()


def _keep(proc: subprocess.Popen[bytes]) -> None:
    with _started_lock:
        _started[:] = [p for p in _started if p.poll() is None]
        _started.append(proc)


def _forget_started() -> None:
    global _started_lock
    _started_lock = threading.Lock()  # another thread may have held it when we forked
    _started.clear()  # the parent's children, not ours


os.register_at_fork(after_in_child=_forget_started)


def agent_bootstrap(root: str) -> str:
    """The ``python -c`` program that starts the agent: this very package (found under
    ``root``) on ``sys.path`` right after the standard library, not before it (a
    ``select.py`` beside the package, or in the working directory, is never imported
    for the standard one), then ``mlbench_metrics.agent`` run as ``__main__``."""
    return (
        "import sys, sysconfig\n"
        "del sys.path[0]\n"  # -c puts the working directory first
        "std = {sysconfig.get_path(n) for n in ('stdlib', 'platstdlib')}\n"
        "after = [i + 1 for i, p in enumerate(sys.path) if p in std or p.endswith('lib-dynload')]\n"
        f"sys.path.insert(max(after, default=len(sys.path)), {root!r})\n"
        "import runpy\n"
        "runpy.run_module('mlbench_metrics.agent', run_name='__main__', alter_sys=True)\n"
    )


class _FrozenRecords(MemoryStore):
    """The records a frozen log could not take: in the durable store's buffer, as tuples."""

    def __init__(self, store: DurableStore) -> None:
        super().__init__(store.prefix)
        self._source = store

    @property
    def buffer(self) -> collections.deque[object]:
        """The durable store's buffer (the writer appends there once the log froze)."""
        return self._source.buffer


class _LocalInbox:
    """The trainer's side of an agent running in this process: pokes, and the end."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._gone = False

    @property
    def gone(self) -> bool:
        return self._gone

    def wait(self, seconds: float) -> None:
        self._event.wait(seconds)
        self._event.clear()

    def poke(self) -> None:
        self._event.set()

    def close(self) -> None:
        self._gone = True
        self._event.set()


class AgentLink:
    """Delivery through an agent process, seen from the training process.

    It has what the logger uses of a dispatcher: ``started``, ``wake``, ``trim``,
    ``flush``, ``close`` and ``stats``.

    Args:
        store: the durable store the hot path writes (``shared=True``).
        config: the logger's settings.
        client: the logger's client (its endpoint, timeouts and retry policy go to the
            agent; an agent running in this process delivers through it).
        deliver: sends a batch of records kept in memory (the client's, for the run).
        run_id: the run.
        token: the bearer token the agent's client sends (None: the environment's).
        on_drained: told when the dispatcher of records kept in memory emptied its buffer.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        store: DurableStore,
        config: LoggerConfig,
        client: ApiClient,
        deliver: Deliver,
        run_id: int,
        token: str | None,
        on_drained: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._config = config
        self._client = client
        self._deliver = deliver
        self._on_drained = on_drained
        self._clock = clock
        self.settings = AgentSettings.of(store.dir.path, config, run_id, client, token)
        self._status = StatusArea(store.dir.path / "status.bin", create=True)
        self._lock = threading.RLock()  # the agent process (or thread) and the memory dispatcher
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe: IO[bytes] | None = None
        self._spawned_at = 0.0
        self._ready_after = 0  # the generation the current agent makes ready by passing it
        self._stopped_since: float | None = None  # when the agent was first seen stopped
        self._failures = 0
        self._local: tuple[AgentCore, threading.Thread, _LocalInbox] | None = None
        self._memory: Dispatcher | None = None
        self._notices = 0
        self._dropped_seen = 0
        self._final: Stats | None = None
        self._closed = False
        self._forked = False
        self._stop = threading.Event()
        self._pause = threading.Event()  # never set: its wait() is the pause between polls
        self._spawn()
        self._watch = start_thread(self._watch_loop, "mlbench-agent-watch")
        _lifecycle.at_fork_in_child(self._after_fork_in_child)

    # -- the agent ----------------------------------------------------------------------------

    def _spawn(self) -> None:
        """Start an agent process (under ``_lock``); deliver from here if none can start."""
        path = self._store.dir.path
        if getattr(sys, "frozen", False) or not sys.executable:
            # Frozen, sys.executable is the application itself (it would train again);
            # embedded, there may be no interpreter to name at all.
            self._fall_back("no Python interpreter to run it with")
            return
        try:
            with open(path / "agent.log", "ab") as errors:
                proc = subprocess.Popen(
                    [sys.executable, "-c", agent_bootstrap(_PACKAGE_ROOT)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,  # not the trainer's: a pipe there would wait for the agent
                    start_new_session=True,
                    # Not the trainer's working directory: not one the agent would keep
                    # busy for as long as it lingers (nor is it on the agent's sys.path).
                    cwd=path,
                )
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self._fall_back(f"it cannot be started: {exc}")
            return
        assert proc.stdin is not None
        try:
            os.write(proc.stdin.fileno(), self.settings.to_json().encode() + b"\n")
            os.set_blocking(proc.stdin.fileno(), False)  # a poke never waits on a stuck agent
        except OSError:
            pass  # it ended already: the watch counts it as an agent that never became ready
        _keep(proc)
        self._proc, self._pipe = proc, proc.stdin
        self._spawned_at = self._clock()
        self._ready_after = self._status.read().generation

    def _check(self) -> None:
        """Start another agent when the last one ended (or never became ready)."""
        with self._lock:
            proc = self._proc
            if proc is None or self._closed or self._forked:
                return
            code = proc.poll()
            ready = self._status.read().generation > self._ready_after
            stopped = False
            if code is None:
                stopped = self._stopped_for_good(proc)
                if stopped:
                    _log.warning(
                        "mlbench-metrics: the delivery agent (pid %d) has been stopped (SIGSTOP?) for %.0f s and "
                        "delivers nothing; replacing it",
                        proc.pid,
                        STOPPED_GRACE,
                    )
                    ready = True  # it was working: not a failure to start
                elif ready or self._clock() - self._spawned_at < START_TIMEOUT:
                    return
                proc.kill()  # a stopped process dies of SIGKILL too, and lets go of its lock
                code = proc.wait()
            self._close_pipe()
            self._proc = None
            self._failures = 0 if ready else self._failures + 1
            if self._failures >= _TRIES:
                where = self._store.dir.path / "agent.log"
                self._fall_back(
                    f"{_TRIES} agents ended before they were ready, the last with status {code}; see {where}"
                )
                return
            if ready and not stopped:
                _log.warning(
                    "mlbench-metrics: the delivery agent (pid %d) ended with status %s; starting another (see %s)",
                    proc.pid,
                    code,
                    self._store.dir.path / "agent.log",
                )
            self._spawn()

    def _stopped_for_good(self, proc: subprocess.Popen[bytes]) -> bool:
        """Whether the agent has been stopped for :data:`STOPPED_GRACE` seconds (under ``_lock``)."""
        if _lifecycle.process_state(proc.pid) != "stopped":
            self._stopped_since = None
            return False
        now = self._clock()
        if self._stopped_since is None:
            self._stopped_since = now
        if now - self._stopped_since < STOPPED_GRACE:
            return False
        self._stopped_since = None
        return True

    def _say_if_stopped(self, waiting: int) -> None:
        """At close: an agent that is stopped delivers nothing after this process either."""
        pid = self.agent_pid
        if waiting > 0 and pid is not None and _lifecycle.process_state(pid) == "stopped":
            where = self._store.dir.path
            _log.warning(
                "mlbench-metrics: the delivery agent (pid %d) is stopped and %d records wait in %s: they are "
                "delivered once it resumes (kill -CONT %d), or by `mlbench-metrics sync %s` once it has ended",
                pid,
                waiting,
                where,
                pid,
                where,
            )

    def _fall_back(self, why: str) -> None:
        """Deliver from this process, with the agent's code, in a thread (under ``_lock``)."""
        _log.warning("mlbench-metrics: the delivery agent cannot run (%s); delivering from this process", why)
        inbox = _LocalInbox()
        core = AgentCore(self.settings, self._client, inbox, clock=self._clock)
        thread = start_thread(core.run, "mlbench-agent")
        self._local = (core, thread, inbox)

    def _poke(self) -> None:
        local, pipe = self._local, self._pipe
        if local is not None:
            local[2].poke()
        elif pipe is not None:
            try:
                os.write(pipe.fileno(), b"f")
            except (OSError, ValueError):  # full (it is busy) or closed (the watch restarts it)
                pass

    def _close_pipe(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass

    def _watch_loop(self) -> None:
        while not self._stop.wait(self._config.flush_interval):
            try:
                self._check()
                self._relay()
                if not self._store.frozen:
                    self._store.log.prepare(self._store.end())
            except Exception:  # never let the thread die silently
                _log.exception("mlbench-metrics: watching the delivery agent failed; it keeps going")

    def _relay(self) -> None:
        """Repeat the agent's warnings here (it writes its own to ``agent.log``)."""
        with self._lock:  # the watch, flush and close: each notice repeated once
            if self._local is not None or self._closed:
                return  # in this process: they went to this process's log already
            self._notices, texts = self._status.notices(self._notices)
        for text in texts:
            _log.warning("%s (from the delivery agent)", text)

    @property
    def agent_pid(self) -> int | None:
        """The agent process's id, while there is one."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # -- what the logger uses -------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Always: the link starts its agent when it is made."""
        return True

    def frozen(self) -> None:
        """The log stopped growing (its writer keeps records in memory from now on):
        tell the agent where the log ends, and deliver the rest from here."""
        self._status.set_end(self._store.end(), closed=False)
        with self._lock:
            if self._memory is None and not self._closed:
                self._memory = start_dispatcher(
                    self._deliver, _FrozenRecords(self._store), self._config, self._on_drained
                )

    def wake(self) -> None:
        """Records kept in memory wait: wake their dispatcher."""
        memory = self._memory
        if memory is not None:
            memory.wake()

    def trim(self) -> None:
        """Memory holds ``max_buffer`` records kept there: as a dispatcher does."""
        memory = self._memory
        if memory is not None:
            memory.trim()

    def flush(self, timeout: float | None) -> bool:
        """Wait until the agent has delivered every record logged before the call.

        Returns:
            True when they are all stored and none was dropped since the previous
            flush; False when time ran out first or some were dropped.
        """
        deadline = self._clock() + (timeout if timeout is not None else float("inf"))
        memory = self._memory
        ok = memory.flush(timeout) if memory is not None else True
        end = self._store.end()
        with self._lock:  # two flushes at once: the later word must not undo the earlier
            self._status.request_flush(end)
        self._poke()
        report = self._wait(end, deadline)
        self._relay()  # why some were dropped, say, now rather than at the next watch
        if report.watermark < end:
            return False
        ok = ok and report.dropped_total == self._dropped_seen
        self._dropped_seen = report.dropped_total
        return ok

    def _wait(self, end: int, deadline: float) -> AgentReport:
        """The agent's report once it has settled every slot below ``end``, or at ``deadline``."""
        pause = 0.001
        while True:
            report = self._status.read()
            if report.watermark >= end or self._clock() >= deadline:
                return report
            self._check()
            self._pause.wait(min(pause, max(0.0, deadline - self._clock())))
            pause = min(2 * pause, 0.02)

    def close(self, timeout: float) -> None:
        """Tell the agent nothing more comes, and wait (within ``timeout``) until it has
        delivered everything; what it has not by then it goes on delivering after this
        process is gone (or, when it ran in this process, stays in the log)."""
        deadline = self._clock() + max(0.0, timeout)
        memory = self._memory
        if memory is not None:
            memory.close(max(0.0, deadline - self._clock()) / 2)
        end = self._store.end()
        self._status.set_end(end, closed=True)
        self._poke()
        report = self._wait(end, deadline)  # (an agent that ended meanwhile is replaced: it delivers after)
        self._relay()  # the agent's warnings so far: the watch stops before it would repeat them
        self._say_if_stopped(end - report.watermark)
        with self._lock:
            self._closed = True
        self._stop.set()
        local = self._local
        if local is not None:
            core, thread, inbox = local
            inbox.close()
            core.stop(max(0.0, deadline - self._clock()))
            thread.join(max(0.0, deadline - self._clock()))
        self._final = self.stats()
        with self._lock:
            self._close_pipe()  # end of file: the agent knows the trainer is gone
        self._watch.join(max(0.0, deadline - self._clock()))
        self._store.close(everything_settled=False)  # the agent removes the directory when done
        self._status.close()

    def stats(self) -> Stats:
        """The agent's counts, with what this process counts itself (records logged, and
        those kept in memory after the log froze).

        Every record not settled yet is on disk in the log: ``spooled`` counts them."""
        if self._final is not None:
            return self._final
        report = self._status.read()
        in_log = self._store.end() - report.skipped
        settled = report.stored + report.dropped_total
        memory = self._memory.stats() if self._memory is not None else Stats(0, 0, 0, {}, 0, 0, 0, None)
        dropped = dict(report.dropped)
        for reason, n in memory.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
        return Stats(
            logged=in_log + memory.logged,
            stored=report.stored + memory.stored,
            retried=report.retried + memory.retried,
            dropped=dropped,
            spooled=max(0, in_log - settled) + memory.spooled,
            in_flight=report.in_flight + memory.in_flight,
            pending=max(0, in_log - settled) + memory.pending,
            last_error=memory.last_error or report.error,
        )

    def _after_fork_in_child(self) -> None:
        # The child delivers its own records through its own agent; it must not keep
        # the pipe open (the agent would wait for the child to end too).
        self._forked = True
        self._close_pipe()
