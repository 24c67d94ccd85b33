"""Delivery: one dispatcher thread, a store protocol, and what a delivery achieved.

* ``dispatcher.py``: :class:`Dispatcher`, the ``mlbench-dispatcher`` thread, and
  ``accounts.py``, what becomes of each parcel in the ledger and the store;
* ``seam.py``: what it delivers through (:data:`Deliver`, :func:`deliver_to`), the
  limits it works within (:class:`DispatchSettings`), and when a batch is tried again;
* ``reasons.py``, ``notices.py``: why records are dropped, and the warnings about it;
* ``ledger.py``: :class:`Ledger`, where every record is (one lock, one invariant), the
  flush markers, and :class:`Stats`;
* ``batch_store.py``: the :class:`BatchStore` protocol, :class:`Parcel` and :class:`MemoryStore`
  (the spool and durable stores live with their files, in ``mlbench_metrics.spool``);
* ``aggregator.py``: :class:`Aggregator`, a ``deliver`` that folds records into per-series
  aggregates when a server without the batch endpoint falls behind (``fold.py``: what a
  point is; ``pace.py``: :class:`FoldPolicy`, when to fold).

The dispatcher knows batches, not modes: a logger builds a store and a ``deliver``
callable (the client's, or an :class:`Aggregator` around it) and passes both in; an
agent process can run the same pair. The dispatcher and the ledger know stored, spooled
and dropped; an aggregator's folded records reach them as kept on disk (spooled). What
a delivery answers (:class:`BatchResult`, :class:`BatchFuture`) is the client's, in
``mlbench_metrics.client.result``.
"""

from __future__ import annotations

from .aggregator import Aggregator
from .batch_store import BatchStore, MemoryStore, Parcel, base_batch_id, next_batch_id
from .dispatcher import Dispatcher, start_dispatcher
from .ledger import Ledger, Stats
from .pace import FoldPolicy
from .reasons import DropReason
from .seam import BACKOFF_FIRST, BACKOFF_MAX, RETRY_AFTER_MAX, DispatchSettings, deliver_to

__all__ = [
    "BACKOFF_FIRST",
    "BACKOFF_MAX",
    "RETRY_AFTER_MAX",
    "Aggregator",
    "BatchStore",
    "DispatchSettings",
    "Dispatcher",
    "DropReason",
    "FoldPolicy",
    "Ledger",
    "MemoryStore",
    "Parcel",
    "Stats",
    "base_batch_id",
    "deliver_to",
    "next_batch_id",
    "start_dispatcher",
]
