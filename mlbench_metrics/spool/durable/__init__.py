"""The durable log: every record in a memory-mapped file before ``log()`` returns.

In a writer directory (see ``files.py``)::

    seg-<first seq>.bin   fixed 48-byte record slots, memory-mapped, space reserved
    dict.log              framed entries: names, contexts and string values, by id
    state.bin             the delivered watermark and the highest record batched

A slot: value (f64, or i64 for integers and string ids) @0, time_ns @8, step @16, name
id @24, context id @28, kind @32, flags @33, the control byte the dispatcher owns @36,
and the commit word (sequence number + 1) @40. The 8-byte fields sit at multiples of 8
so each column reads with one strided memoryview. A slot is packed in one call, commit
word last (struct packs in order), so a process killed before the commit leaves an
uncommitted slot: a ``log()`` that had not returned. Control bits: a batch's first and
last slot (marked before it is sent), delivered (on its first slot), and done (a slot
stored or refused on its own, after a partial answer: never sent again).

Segments are reserved with ``posix_fallocate`` before they are mapped: a full disk is an
error here, never a SIGBUS in the training thread. Size bound: at most ``max(2,
max_bytes // 16 MiB)`` segments are kept; mapping one more deletes the oldest (its
undelivered records are counted as ``"spool_full"``).

With process delivery an agent process delivers the log while its writer writes it; the
two share ``status.bin``: what the trainer asks (flushes, where the log ends) and what the
agent reports (its counts, its delivered watermark), and ``agent.lock``, held by the
agent while it works (``sync`` leaves such a directory alone).

This package is the only writer and reader of these files: ``layout.py`` (the format),
``mapped.py`` (marking and reading, shared by the writer's process and the agent),
``log.py`` (:class:`DurableLog`, the live process's), ``range_store.py`` (:class:`DurableStore`,
the dispatcher's store, with the training thread's writer; :class:`RangeStore`, the slot
bookkeeping), ``tail.py`` (:class:`TailLog` and :class:`TailStore`: the agent's reading
of a live log, and taking over from a dead agent), ``status.py`` (:class:`StatusArea`)
and ``replay.py`` (:func:`read_durable` and :class:`DurableMarks`, for ``sync``). No
threads.
"""

from __future__ import annotations

from .layout import CTL_DELIVERED, CTL_DONE, CTL_END, CTL_START
from .log import DurableLog
from .range_store import DurableStore, RangeStore
from .replay import DurableMarks, DurableRecord, DurableReport, durable_metadata, read_durable, replay_batches
from .status import AgentReport, StatusArea
from .tail import TailLog, TailStore

__all__ = [
    "CTL_DELIVERED",
    "CTL_DONE",
    "CTL_END",
    "CTL_START",
    "AgentReport",
    "DurableLog",
    "DurableMarks",
    "DurableRecord",
    "DurableReport",
    "DurableStore",
    "RangeStore",
    "StatusArea",
    "TailLog",
    "TailStore",
    "durable_metadata",
    "read_durable",
    "replay_batches",
]
