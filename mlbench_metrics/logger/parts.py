"""A logger's delivery parts, assembled from its settings: a store and its delivery.

The store is memory (``spool=False``), a batch spool, or durable mode's log; one whose
directory cannot be written is reported once and replaced by memory, so ``log()`` never
fails for it. Delivery is a :class:`~mlbench_metrics.delivery.Dispatcher` given the store
and the ``deliver`` callable, or, with ``delivery="process"``, an
:class:`~mlbench_metrics.agent.AgentLink` to the agent process that delivers the log;
neither is changed from outside afterwards. The dispatcher's thread (or the agent, and
the link's watch thread) is started here (except for the placeholder a forked child uses
until its first record).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from ..delivery import BatchStore, Dispatcher, MemoryStore, Stats, start_dispatcher
from ..delivery.seam import Deliver
from ..errors import SpoolError
from ..spool import DurableStore, SpoolDir, SpoolStore
from .inlet import Inlet
from .settings import LoggerConfig

if TYPE_CHECKING:
    from ..agent import AgentLink
    from ..agent.adopt import Adoption
    from ..client.api import ApiClient

__all__ = ["Delivery", "Parts", "open_parts", "placeholder_parts", "with_aggregation"]

_log = logging.getLogger("mlbench_metrics")


class Delivery(Protocol):
    """What the logger uses of its delivery (a :class:`Dispatcher`, or an ``AgentLink``)."""

    @property
    def started(self) -> bool:
        """Whether it runs in this process already (a forked child starts its own)."""

    def wake(self) -> None:
        """A batch's worth is waiting."""

    def trim(self) -> None:
        """The buffer holds ``max_buffer`` records."""

    def flush(self, timeout: float | None) -> bool:
        """Wait until everything logged before is stored; False on time out or drops."""

    def close(self, timeout: float) -> None:
        """Deliver what is left within ``timeout``, then stop."""

    def stats(self) -> Stats:
        """A snapshot of the counts."""


@dataclass(frozen=True)
class Parts:
    """What a logger's hot path and lifecycle use.

    Attributes:
        store: where batches wait.
        dispatcher: the delivery thread's owner (or the link to the agent process).
        inlet: the way the hot path puts records into ``store``.
        agent: the link to the delivery agent (``delivery="process"``), else None.
        adoption: delivering what dead processes of the run left (thread delivery; an
            agent does it itself), else None.
    """

    store: BatchStore
    dispatcher: Delivery
    inlet: Inlet
    agent: AgentLink | None = None
    adoption: Adoption | None = None


def open_parts(
    config: LoggerConfig,
    deliver: Deliver,
    *,
    run_id: int,
    endpoint: str,
    batch_supported: Callable[[], bool | None] | None = None,
    on_frozen: Callable[[], None],
    on_drained: Callable[[], None],
    client: ApiClient | None = None,
    token: str | None = None,
) -> Parts:
    """The store ``config`` asks for and a started dispatcher delivering through ``deliver``
    (or, ``delivery="process"``, the durable log and a link to its agent).

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
        client: the logger's client (process delivery: the agent's is made like it).
        token: the bearer token the agent sends (None: the environment's).
    """
    if config.delivery == "process" and client is not None:
        parts = _process_parts(config, deliver, run_id, endpoint, on_frozen, on_drained, client, token)
        if parts is not None:
            return parts
        config = dataclasses.replace(config, delivery="thread", durable=False, spool=False)  # said once
    prefix = uuid.uuid4().hex
    store: BatchStore = MemoryStore(prefix)
    inlet = Inlet.memory(store.buffer)
    directory: SpoolDir | None = None
    if config.spool:
        meta = {"endpoint": endpoint, "durable": config.durable, "batch_size": config.batch_size}
        directory = SpoolDir(config.spool_dir, run_id, meta)
        if not config.durable:
            store = SpoolStore(directory, config.spool_max_bytes, prefix)
            inlet = Inlet.memory(store.buffer)
        else:
            try:
                durable = DurableStore(directory, config.spool_max_bytes, prefix, on_frozen)
            except SpoolError as exc:
                _log.warning("mlbench-metrics: %s; records are kept in memory only (not durable)", exc)
                directory = None
            else:
                store, inlet = durable, Inlet(durable.buffer, durable.append, durable.write)
    on_closed = None
    if directory is not None and directory.problem() is None and batch_supported is not None:
        deliver, store, on_drained, on_closed = with_aggregation(
            config, deliver, store, directory, batch_supported, on_drained
        )
    dispatcher = start_dispatcher(deliver, store, config, on_drained, on_closed)
    adoption = None
    if directory is not None and client is not None:
        adoption = _adoption(directory, endpoint, client, config.batch_size)
    return Parts(store, dispatcher, inlet, None, adoption)


def _adoption(directory: SpoolDir, endpoint: str, client: ApiClient, batch_size: int) -> Adoption | None:
    """Start delivering what dead processes of the run left next to ``directory``, if any."""
    from ..agent.adopt import Adoption, orphans

    found = orphans(directory.path, endpoint)
    return Adoption(found, client, batch_size) if found else None


def _process_parts(
    config: LoggerConfig,
    deliver: Deliver,
    run_id: int,
    endpoint: str,
    on_frozen: Callable[[], None],
    on_drained: Callable[[], None],
    client: ApiClient,
    token: str | None,
) -> Parts | None:
    """The durable log (its writer queues nothing) and the link to its agent; None, with
    one warning, when the log cannot be made (then a thread delivers, from memory)."""
    from ..agent import AgentLink  # imported here: only process delivery needs it

    links: list[AgentLink] = []

    def frozen() -> None:
        for link in links:  # first: records kept in memory need a dispatcher here
            link.frozen()
        on_frozen()

    meta = {"endpoint": endpoint, "durable": True, "batch_size": config.batch_size, "delivery": "process"}
    directory = SpoolDir(config.spool_dir, run_id, meta)
    try:
        store = DurableStore(directory, config.spool_max_bytes, uuid.uuid4().hex, frozen, shared=True)
    except SpoolError as exc:
        _log.warning("mlbench-metrics: %s; delivering from this process, records kept in memory only", exc)
        return None
    try:
        links.append(AgentLink(store, config, client, deliver, run_id, token, on_drained))
    except SpoolError as exc:
        _log.warning("mlbench-metrics: %s; delivering from this process, records kept in memory only", exc)
        store.close(everything_settled=True)
        directory.release(remove=True)
        return None
    return Parts(store, links[0], Inlet(store.buffer, store.append, store.write), links[0])


def placeholder_parts(config: LoggerConfig, deliver: Deliver) -> Parts:
    """Parts for a forked child until its first record: memory only, no thread."""
    store = MemoryStore(uuid.uuid4().hex)
    return Parts(store, Dispatcher(deliver, store, config), Inlet.memory(store.buffer))


def with_aggregation(
    config: LoggerConfig,
    deliver: Deliver,
    store: BatchStore,
    directory: SpoolDir,
    batch_supported: Callable[[], bool | None],
    on_drained: Callable[[], None],
) -> tuple[Deliver, BatchStore, Callable[[], None], Callable[[Stats], None] | None]:
    """``deliver`` folding when the server falls behind, ``store`` copying what the folds
    stand for, ``on_drained`` ticking the folding too, and what to say at close about the
    raw copies (unchanged, and nothing to say, with ``aggregate="off"``). Whoever builds a
    dispatcher (a logger, an agent process) passes these four to it: the dispatcher only
    sees a ``deliver`` that keeps some records on disk.

    Args:
        config: the settings (``aggregate``, ``spool_max_bytes``).
        deliver: the client's ``post_metrics`` for the run.
        store: the spool or durable store, writing in ``directory``.
        directory: the writer directory the raw copies go to.
        batch_supported: whether the server has the batch endpoint (None until known).
        on_drained: what the dispatcher would tell each time it empties the buffer.
    """
    from ..delivery import Aggregator, FoldPolicy  # imported here: only aggregation needs them
    from ..spool import KeepRaw, RawCopies

    policy = FoldPolicy(config.aggregate)
    if policy.off:
        return deliver, store, on_drained, None
    copies = RawCopies(directory, config.spool_max_bytes)
    aggregator = Aggregator(
        deliver, policy, batch_supported=batch_supported, keep=copies.keep_one, on_fold=copies.mark_folded
    )
    kept = KeepRaw(store, copies, batch_supported, lambda: aggregator.folded)

    def drained() -> None:
        on_drained()
        aggregator.tick()

    def closed(stats: Stats) -> None:
        where = kept.location
        if stats.folded and where is not None:
            _log.warning(
                "mlbench-metrics: the server has aggregates of %d records whose raw copies are in %s; upload them "
                "to a server with the batch endpoint with: mlbench-metrics sync %s --to URL",
                stats.folded,
                where,
                where,
            )

    return aggregator, kept, drained, closed
