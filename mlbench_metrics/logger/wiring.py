"""How a logger is wired to its delivery: the parts built from its settings, and what they report.

:class:`Wiring` is the part of :class:`~mlbench_metrics.MetricsLogger` that builds its
parts (``parts.py``: the store, the dispatcher or the link to the delivery agent, and
the :class:`Inlet` records go in by), replaces them whole (a forked child's placeholder,
a durable log that cannot grow), and answers what they know (``stats``, ``durable``,
``delivery``, ``agent_pid``, ``spool_dir``). The hot path reads ``_in`` and ``_wake_at``
directly. No threads are started here (the parts start theirs).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import _lifecycle
from ..delivery import BatchStore, Stats, deliver_to
from .inlet import Inlet
from .parts import Delivery, Parts, open_parts
from .stamping import Stamping

if TYPE_CHECKING:  # the agent's modules are imported only when process delivery is used
    from ..agent import AgentLink
    from ..agent.adopt import Adoption
    from ..client.api import ApiClient
    from .liveness import Liveness

__all__ = ["Wiring"]


class Wiring(Stamping):
    """A logger's parts; the logger sets ``client``, ``run_id`` and ``_token`` before
    :meth:`_open_parts`."""

    client: ApiClient
    run_id: int
    _token: str | None
    _store: BatchStore
    _dispatcher: Delivery
    _agent: AgentLink | None
    _adoption: Adoption | None
    _in: Inlet
    _wake_at: int
    _liveness: Liveness | None

    def _open_parts(self) -> None:
        """Build the store and the dispatcher; point the hot path at the store's buffer."""
        client = self.client  # not self: the dispatcher's thread must not keep the logger alive
        liveness, reset = self._liveness, _lifecycle.weak_call(self._reset_wake_threshold)

        def drained() -> None:  # each interval's tick: the heartbeat rides on it
            reset()
            if liveness is not None:
                liveness.tick()

        self._use(
            open_parts(
                self.settings,
                liveness.deliver if liveness is not None else deliver_to(client, self.run_id),
                batch_supported=lambda: client.batch_supported,
                run_id=self.run_id,
                endpoint=client.endpoint,
                on_frozen=self._on_log_frozen,
                on_drained=drained,
                client=self.client,
                token=self._token,
            )
        )
        self._wake_at = self.settings.batch_size

    def _use(self, parts: Parts) -> None:
        self._store = parts.store
        self._dispatcher = parts.dispatcher
        self._agent = parts.agent
        self._adoption = parts.adoption
        self._in = parts.inlet

    def _on_log_frozen(self) -> None:
        """The durable log cannot grow: from now on the hot path appends to memory
        (unless it writes nowhere already: the logger is closed)."""
        if self._in.durable:
            self._in = Inlet.memory(self._store.buffer)

    def _reset_wake_threshold(self) -> None:
        self._wake_at = self.settings.batch_size

    @property
    def durable(self) -> bool:
        """Whether every record is written to disk before ``log()`` returns."""
        return self._in.durable

    @property
    def delivery(self) -> str:
        """``"process"`` when the agent delivers (in its process, or, when none could
        start, in a thread here); ``"thread"`` when this process's dispatcher does."""
        return "process" if self._agent is not None else "thread"

    @property
    def agent_pid(self) -> int | None:
        """The delivery agent's process id (``delivery="process"``), while it runs."""
        return self._agent.agent_pid if self._agent is not None else None

    @property
    def spool_dir(self) -> Path | None:
        """This process's spool directory, when something was written there."""
        return self._store.location

    @property
    def stats(self) -> Stats:
        """Counters: logged, stored, retried, dropped (by reason), spooled, in flight, ..."""
        return self._dispatcher.stats()
