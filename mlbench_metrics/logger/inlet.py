"""Where the logger's hot path puts records: one object, replaced whole.

An :class:`Inlet` holds the three things ``log()`` needs, already bound: the buffer
(whose length wakes the dispatcher), ``append`` for a record tuple, and durable mode's
``write`` (a slot of the log, without building a tuple). The logger swaps the whole
inlet, never a part of it: when its parts are built, when a durable log cannot grow any
more (records go to memory from then on), and at close (appending raises). No threads.
"""

from __future__ import annotations

from typing import Callable, Protocol

from ..errors import ClosedError
from ..records.batch import Record
from ..spool.durable.range_store import Writer

__all__ = ["Buffer", "Inlet"]


class Buffer(Protocol):
    """What records wait in: the store's deque, or the closed stand-in."""

    def append(self, item: Record, /) -> None:
        """Add one record (or raise: closed)."""

    def __len__(self) -> int:
        """Records waiting."""


class _ClosedBuffer:
    """Stands in for the buffer after ``close()``: appending raises, at no cost before."""

    def append(self, item: object) -> None:
        raise ClosedError("this MetricsLogger is closed; create a new one (or call init()) to log more")

    def __len__(self) -> int:
        return 0


class Inlet:
    """The way records go in; replaced whole, never changed in part.

    Args:
        buffer: where records wait for the dispatcher (its length is what wakes it).
        append: adds one record tuple (``buffer.append``, or the durable log's append).
        write: durable mode's writer for ``log()``, else None; without one, ``append``
            is ``buffer.append``.
    """

    __slots__ = ("append", "buffer", "for_log", "write")

    def __init__(self, buffer: Buffer, append: Callable[[Record], None], write: Writer | None = None) -> None:
        self.buffer = buffer
        self.append = append
        self.write = write
        self.for_log: tuple[Buffer, Writer | None] = (buffer, write)
        """What ``log()`` needs, as one plain tuple (unpacking it is the fastest way in)."""

    @classmethod
    def memory(cls, buffer: Buffer) -> Inlet:
        """Records go to ``buffer`` only."""
        return cls(buffer, buffer.append)

    @classmethod
    def closed(cls) -> Inlet:
        """The inlet of a closed logger: every way in raises :class:`ClosedError`."""
        return cls.memory(_ClosedBuffer())

    @property
    def durable(self) -> bool:
        """Whether ``log()`` writes to the durable log."""
        return self.write is not None
