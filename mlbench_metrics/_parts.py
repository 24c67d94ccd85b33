"""A logger's delivery parts, assembled from its settings: a store and a dispatcher.

The store is memory (``spool=False``), a batch spool, or durable mode's log; one whose
directory cannot be written is reported once and replaced by memory, so ``log()`` never
fails for it. The dispatcher gets the store and the ``deliver`` callable; neither is
changed from outside afterwards. The dispatcher's thread is started here (except for
the placeholder a forked child uses until its first record).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Callable

from .config import LoggerConfig
from .delivery import BatchStore, Dispatcher, MemoryStore
from .delivery.dispatcher import Deliver
from .errors import SpoolError
from .records.batch import Record
from .spool import DurableStore, SpoolDir, SpoolStore
from .spool.durable.store import Writer

__all__ = ["Parts", "open_parts", "placeholder_parts", "with_aggregation"]

_log = logging.getLogger("mlbench_metrics")


@dataclass(frozen=True)
class Parts:
    """What a logger's hot path and lifecycle use.

    Attributes:
        store: where batches wait; its ``buffer`` is what the hot path appends to.
        dispatcher: the delivery thread's owner.
        append: appends (or, durable, writes) one record tuple.
        write: durable mode's writer for ``log()`` (no tuple built), else None.
    """

    store: BatchStore
    dispatcher: Dispatcher
    append: Callable[[Record], None]
    write: Writer | None


def open_parts(
    config: LoggerConfig,
    deliver: Deliver,
    *,
    run_id: int,
    endpoint: str,
    batch_supported: Callable[[], bool | None] | None = None,
    on_frozen: Callable[[], None],
    on_drained: Callable[[], None],
) -> Parts:
    """The store ``config`` asks for and a started dispatcher delivering through ``deliver``.

    Args:
        config: the logger's settings.
        deliver: sends one batch (``ApiClient.post_metrics`` for the run).
        run_id: the run the spool's directory is named after.
        endpoint: the server, written to the spool's ``meta.json`` for ``sync``.
        batch_supported: whether the server has the batch endpoint (None until known);
            given, and with a spool, ``deliver`` and the store are wrapped by
            :func:`with_aggregation`; without it nothing is ever folded into aggregates.
        on_frozen: durable mode: told once when the log cannot grow any more.
        on_drained: told each time the dispatcher has emptied the buffer.
    """
    prefix = uuid.uuid4().hex
    store: BatchStore = MemoryStore(prefix)
    append: Callable[[Record], None] = store.buffer.append
    write: Writer | None = None
    directory: SpoolDir | None = None
    if config.spool:
        meta = {"endpoint": endpoint, "durable": config.durable, "batch_size": config.batch_size}
        directory = SpoolDir(config.spool_dir, run_id, meta)
        if not config.durable:
            store = SpoolStore(directory, config.spool_max_bytes, prefix)
            append = store.buffer.append
        else:
            try:
                durable = DurableStore(directory, config.spool_max_bytes, prefix, on_frozen)
            except SpoolError as exc:
                _log.warning("mlbench-metrics: %s; records are kept in memory only (not durable)", exc)
                directory = None
            else:
                store, append, write = durable, durable.append, durable.write
    if directory is not None and directory.problem() is None and batch_supported is not None:
        deliver, store, on_drained = with_aggregation(config, deliver, store, directory, batch_supported, on_drained)
    dispatcher = Dispatcher(
        deliver,
        store,
        batch_size=config.batch_size,
        flush_interval=config.flush_interval,
        max_buffer=config.max_buffer,
        max_in_flight=config.max_in_flight,
        on_drained=on_drained,
    )
    dispatcher.start()
    return Parts(store, dispatcher, append, write)


def placeholder_parts(deliver: Deliver) -> Parts:
    """Parts for a forked child until its first record: memory only, no thread."""
    store = MemoryStore(uuid.uuid4().hex)
    return Parts(store, Dispatcher(deliver, store), store.buffer.append, None)


def with_aggregation(
    config: LoggerConfig,
    deliver: Deliver,
    store: BatchStore,
    directory: SpoolDir,
    batch_supported: Callable[[], bool | None],
    on_drained: Callable[[], None],
) -> tuple[Deliver, BatchStore, Callable[[], None]]:
    """``deliver`` folding when the server falls behind, ``store`` copying what the folds
    stand for, and ``on_drained`` ticking the folding too (unchanged with
    ``aggregate="off"``). Whoever builds a dispatcher (a logger, an agent process) passes
    these three to it.

    Args:
        config: the settings (``aggregate``, ``spool_max_bytes``).
        deliver: the client's ``post_metrics`` for the run.
        store: the spool or durable store, writing in ``directory``.
        directory: the writer directory the raw copies go to.
        batch_supported: whether the server has the batch endpoint (None until known).
        on_drained: what the dispatcher would tell each time it empties the buffer.
    """
    from .delivery import Aggregator, FoldPolicy  # imported here: only aggregation needs them
    from .spool import KeepRaw, RawCopies

    policy = FoldPolicy(config.aggregate)
    if policy.off:
        return deliver, store, on_drained
    copies = RawCopies(directory, config.spool_max_bytes)
    aggregator = Aggregator(
        deliver, policy, batch_supported=batch_supported, keep=copies.keep_one, on_fold=copies.mark_folded
    )
    kept = KeepRaw(store, copies, batch_supported)

    def drained() -> None:
        on_drained()
        aggregator.tick()

    return aggregator, kept, drained
