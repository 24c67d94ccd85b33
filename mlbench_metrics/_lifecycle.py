"""Process hooks: interpreter exit, SIGTERM and fork, for the library's loggers.

One exit hook for the process closes every live logger at interpreter exit, before
``concurrent.futures`` joins its threads; on SIGTERM, when the program has no handler of
its own, the same happens and the process then ends as SIGTERM would. A multiprocessing
child ends with ``os._exit()``, which skips exit hooks: its loggers are closed by a
multiprocessing finalizer instead. Fork hooks are registered through weak references,
so a hook never keeps its object alive. This module starts no threads.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (imported first: our exit hook must run before its own)
import logging
import os
import signal
import sys
import threading
import weakref
from typing import Callable, Protocol

__all__ = [
    "Closable",
    "at_fork_in_child",
    "process_state",
    "register",
    "register_in_child",
    "terminating",
    "unregister",
    "weak_call",
]

_log = logging.getLogger("mlbench_metrics")


class Closable(Protocol):
    """What the exit hook closes."""

    def close_at_exit(self) -> str | None:
        """Close within the object's own timeout; a line for stderr when something was lost."""


def process_state(pid: int) -> str | None:
    """What process ``pid`` is doing, from ``/proc/<pid>/stat``: ``"stopped"`` (SIGSTOP, a
    debugger: state ``T``/``t``), ``"zombie"`` (``Z``, ended and not reaped), ``"running"``
    (any other state), or None when there is no such process or no ``/proc`` to say."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]  # the name in parentheses may hold anything
    if state in (b"T", b"t"):
        return "stopped"
    if state in (b"Z", b"X"):
        return "zombie"
    return "running"


def weak_call(method: Callable[[], None]) -> Callable[[], None]:
    """A callable that calls the bound ``method`` while its object lives."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        target = ref()
        if target is not None:
            target()

    return call


def at_fork_in_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in the child after each ``os.fork()``, while its object lives."""
    os.register_at_fork(after_in_child=weak_call(method))


_live: weakref.WeakSet[Closable] = weakref.WeakSet()
_terminating = False  # SIGTERM arrived: runs this process created end as failed
# Reentrant: the SIGTERM handler runs in the main thread between any two bytecodes, also
# while that thread holds this lock in register() (init()), and closing unregisters.
_hooks_lock = threading.RLock()
_exit_hook_installed = False
_sigterm_installed = False
_finalizer_pid: int | None = None


def register(obj: Closable, handle_sigterm: bool) -> None:
    """Close ``obj`` at exit (and on SIGTERM, when asked and the program has no handler)."""
    global _exit_hook_installed, _sigterm_installed
    with _hooks_lock:
        _live.add(obj)
        if not _exit_hook_installed:
            _install_exit_hook()
            _exit_hook_installed = True
        if handle_sigterm and not _sigterm_installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True


def unregister(obj: Closable) -> None:
    """``obj`` is closed: the hooks forget it."""
    with _hooks_lock:
        _live.discard(obj)


def register_in_child(obj: Closable) -> None:
    """In a forked child: also close ``obj`` when multiprocessing ends the child."""
    global _finalizer_pid
    with _hooks_lock:
        _live.add(obj)
        if _finalizer_pid == os.getpid():
            return
        _finalizer_pid = os.getpid()
    from multiprocessing import util

    util.Finalize(None, close_all, exitpriority=100)


def terminating() -> bool:
    """Whether the process is ending because of SIGTERM."""
    return _terminating


def close_all() -> None:
    """Close every live object; say on stderr what each could not deliver."""
    for obj in list(_live):
        try:
            line = obj.close_at_exit()
        except Exception:  # the exit path must not raise
            _log.exception("mlbench-metrics: closing a logger at exit failed")
            continue
        if line:
            print(line, file=sys.stderr)


def _install_exit_hook() -> None:
    """``threading._register_atexit`` hooks run before non-daemon threads are joined, so
    ours runs while our threads and the client's are alive, and before
    ``concurrent.futures`` waits for its workers (hooks run last-registered first)."""
    register_atexit = getattr(threading, "_register_atexit", None)
    if register_atexit is not None:
        try:
            register_atexit(close_all)
            return
        except RuntimeError:  # already shutting down
            pass
    atexit.register(close_all)


def _on_sigterm(signum: int, frame: object) -> None:
    """Deliver within each logger's shutdown_timeout, then end as SIGTERM would."""
    global _terminating
    _terminating = True
    close_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _reset_after_fork() -> None:
    global _hooks_lock
    _hooks_lock = threading.RLock()  # another thread may have held it when we forked


os.register_at_fork(after_in_child=_reset_after_fork)
