"""Starting the library's threads so that SIGTERM and SIGINT reach the main thread.

The kernel delivers a process-directed signal to any thread that does not block it.
CPython runs Python signal handlers only in the main thread, but when the kernel picks
another thread, a main thread waiting in ``signal.pause()`` (or ``sigwait``) is never
woken. Every thread the library starts therefore blocks SIGTERM and SIGINT: a new
thread inherits the mask of the thread that starts it, so the mask is set around
``start()`` and restored at once (:func:`start_thread`), and pool workers set it
themselves (:func:`block_signals`, a ``ThreadPoolExecutor`` initializer).

This module starts no threads of its own.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Callable, Final, Iterator

__all__ = ["BLOCKED", "block_signals", "signals_blocked", "start_blocked", "start_thread"]

BLOCKED: Final = frozenset({signal.SIGTERM, signal.SIGINT})
"""The signals the library's threads leave to the main thread."""


def block_signals() -> None:
    """Block :data:`BLOCKED` in the calling thread (a pool initializer)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Block :data:`BLOCKED` in the calling thread for the ``with`` block, so threads
    started inside it (a pool's workers, started on demand by ``submit``) inherit the
    mask from their first instruction; a signal arriving meanwhile waits, then runs."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, BLOCKED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_blocked(thread: threading.Thread) -> threading.Thread:
    """Start ``thread`` (not started yet) with SIGTERM and SIGINT blocked in it."""
    with signals_blocked():
        thread.start()
    return thread


def start_thread(
    target: Callable[..., Any], name: str, *, args: tuple[Any, ...] = (), daemon: bool = True
) -> threading.Thread:
    """Start a daemon thread that runs ``target(*args)`` with SIGTERM and SIGINT blocked.

    Returns:
        The started thread; its owner stops and joins it.
    """
    return start_blocked(threading.Thread(target=target, args=args, name=name, daemon=daemon))
