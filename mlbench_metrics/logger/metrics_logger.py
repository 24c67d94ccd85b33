"""MetricsLogger: what the training loop touches.

``log``, ``increment`` and timers validate, stamp the time and append one tuple to the
store's buffer (in durable mode: write one slot of the log): no network, no lock on the
plain path. A record that would be refused later is refused here, at the call, with an
error naming the field and the limit; once accepted, a record is stored, spooled, or
counted in ``stats.dropped``, never silently lost.

What a record carries (its final name, rank, epoch, step) is ``stamping.py``'s; how the
logger is wired to its delivery (the parts ``parts.py`` builds from its settings: a
store, a :class:`Dispatcher` that owns the one delivery thread, or the link to an agent,
and the :class:`Inlet` records go in by) is ``wiring.py``'s. Exit,
SIGTERM and fork hooks are ``_lifecycle``'s; the module-level API (``init``, ``log``,
``finish``...) is ``current``'s. After ``os.fork()`` the child starts empty and builds
its own parts on its first record. This module starts no threads itself.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Final, Mapping, Protocol, TypeVar

from .. import _lifecycle
from ..client.api import ApiClient
from ..delivery import deliver_to
from ..errors import ClosedError
from ..records import check_number, check_step
from ..timing import Timer, timed
from .inlet import Inlet
from .liveness import Liveness
from .own_run import check_run, create_own_run, mark_own_run
from .parts import placeholder_parts
from .run_config import check_config, send_config
from .settings import LoggerConfig, elsewhere
from .stamping import checked_value
from .wiring import Wiring

__all__ = ["MetricsLogger", "Sampler"]

_log = logging.getLogger("mlbench_metrics")
_F = TypeVar("_F", bound=Callable[..., Any])

_time_ns: Final = time.time_ns


class Sampler(Protocol):
    """Something that records into a logger from its own thread (``SystemMetrics``)."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop recording and join the thread."""


class MetricsLogger(Wiring):
    """Record metrics from a training loop to an MLBench dashboard.

    Example::

        with MetricsLogger(run_id, url="127.0.0.1:8080", rank=rank) as log:
            for epoch in range(epochs):
                for step, batch in enumerate(loader):
                    with log.timer("fwd_pass"):
                        loss = model(batch)
                    log.log("train_loss", loss.item(), step=step)
                    log.increment("samples", len(batch))
                log.epoch_end()

    Names become ``"<name> @ <rank>"`` when a rank is set, and every record carries JSON
    metadata with rank, epoch and step, as the dashboard's own training code does.

    Args:
        run_id: the dashboard run to log to (or ``MLBENCH_METRICS_RUN_ID``).
        client: an :class:`ApiClient` to deliver through; the logger does not close it.
        url: the dashboard's address, when no client is given (else
            ``MLBENCH_METRICS_URL``, else Kubernetes discovery as ApiClient does it).
        rank: this process's rank (else ``MLBENCH_METRICS_RANK``, else an initialised
            ``torch.distributed`` process group's, else ``RANK``, ``OMPI_COMM_WORLD_RANK``,
            ``PMI_RANK``, ``SLURM_PROCID``, ``LOCAL_RANK``, else none). The world size
            found with it is in every record's metadata (``world_size``).
        flush_interval: seconds between deliveries (else ``MLBENCH_METRICS_FLUSH_INTERVAL``,
            else 1.0); a full batch is delivered at once.
        batch_size: records per batch (1 to 100,000).
        max_buffer: records held in memory at most; beyond it the oldest go to the spool
            when there is one, else they are dropped and counted in ``stats.dropped``.
        max_in_flight: batches sent and not yet answered, at most.
        shutdown_timeout: seconds ``close()`` (and the exit hook) may take.
        handle_sigterm: on SIGTERM, when the program has no handler of its own, deliver
            within ``shutdown_timeout`` and then end as SIGTERM would.
        token: a bearer token for the client the logger creates.
        spool: keep what cannot be delivered (or held in memory) on disk and send it
            from there later; False drops it instead (counted in ``stats.dropped``).
        spool_dir: the spool's root (else ``MLBENCH_METRICS_SPOOL_DIR``, else
            ``~/.cache/mlbench-metrics/spool``); a directory per run and process inside.
            One that cannot be written is reported once; records then stay in memory.
        spool_max_bytes: the most this process's spool may take on disk (at least 1 MiB;
            a durable log keeps at least two 16 MiB segments); past it the oldest
            spooled records are deleted and counted (``"spool_full"``).
        durable: write every record to a memory-mapped file before ``log()`` returns,
            so a process killed at any moment (SIGKILL, OOM) loses nothing logged;
            ``mlbench-metrics sync`` delivers what it left.
        aggregate: against a server without the batch endpoint (the dashboard, which
            stores a few dozen posts a second): ``"auto"`` (the default, else
            ``MLBENCH_METRICS_AGGREGATE``) sends per-series aggregates (the mean, or a
            total's last value, with count, min, max, first and last step in the
            metadata) when records arrive faster than the server stores them, measured
            as it goes, so its charts stay a few seconds behind at most; a number of
            seconds always sends aggregates over windows that long; ``"off"`` always
            sends every record. The records folded keep their raw copies in the spool
            (``stats.folded``) for ``mlbench-metrics sync --to URL``; without a spool
            nothing is folded.
        new_run: instead of ``run_id``, create a run with this name (a custom run whose
            command is this program's) and log to it; ``close()`` marks it finished,
            or failed when the program ends with an uncaught exception or SIGTERM
            (where the server supports run states; the dashboard does not). In a
            process started for a run (``MLBENCH_METRICS_RUN_ID`` is set, as
            ``serve --exec`` sets it), that run is used instead.
        config: the run's configuration (hyperparameters), a JSON-serialisable mapping
            stored once with the run where the server can (the embedded server; the
            dashboard cannot, and a warning says so). See :mod:`mlbench_metrics.logger.run_config`.
        delivery: ``"thread"`` (else ``MLBENCH_METRICS_DELIVERY``, else the default): a
            thread in this process delivers; ``"process"``: this process only writes
            each record to the durable log (as ``durable=True``) and a delivery agent
            process delivers it, even after this process is killed. See
            :mod:`mlbench_metrics.agent`.

    Raises:
        ConfigError: an argument is invalid or the run id is missing.
    """

    def __init__(
        self,
        run_id: int | str | None = None,
        *,
        client: ApiClient | None = None,
        url: str | None = None,
        rank: int | None = None,
        flush_interval: float | None = None,
        batch_size: int = LoggerConfig.batch_size,
        max_buffer: int = LoggerConfig.max_buffer,
        max_in_flight: int = LoggerConfig.max_in_flight,
        shutdown_timeout: float = LoggerConfig.shutdown_timeout,
        handle_sigterm: bool = LoggerConfig.handle_sigterm,
        token: str | None = None,
        spool: bool = LoggerConfig.spool,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = LoggerConfig.spool_max_bytes,
        durable: bool = LoggerConfig.durable,
        aggregate: str | float | None = None,
        new_run: str | None = None,
        config: Mapping[str, Any] | None = None,
        delivery: str | None = None,
    ) -> None:
        settings = LoggerConfig.resolve(
            run_id,
            rank=rank,
            flush_interval=flush_interval,
            new_run=new_run,
            elsewhere=elsewhere(url, client),
            delivery=delivery,
            batch_size=batch_size,
            max_buffer=max_buffer,
            max_in_flight=max_in_flight,
            shutdown_timeout=shutdown_timeout,
            handle_sigterm=handle_sigterm,
            spool=spool,
            spool_dir=spool_dir,
            spool_max_bytes=spool_max_bytes,
            durable=durable,
            aggregate=aggregate,
            run_config=None if config is None else check_config(config),
        )
        super().__init__(settings)
        self._own_client = client is None
        self._token = token
        # The logger keeps its strict checks: it refuses at the call what the dashboard would.
        self.client = client if client is not None else ApiClient(url=url, token=token, strict=True)
        self._owns_run = self.settings.new_run is not None
        try:
            if self.settings.run_id is not None:
                check_run(self.client, self.settings.run_id)
            self.run_id = self.settings.run_id or create_own_run(self.client, str(self.settings.new_run))
        except BaseException:
            if self._own_client:
                self.client.close()
            raise
        if self.settings.run_config is not None:
            send_config(self.client, self.run_id, self.settings.run_config)
        self._lock = threading.Lock()
        self._close_lock = threading.RLock()
        self._closed = False
        self._totals: dict[str, float] = {}
        self._samplers: list[Sampler] = []
        # The run's state follows its writers (the embedded server); the agent delivers for "process".
        self._liveness = Liveness(self.client, self.run_id, self.rank) if self.settings.delivery != "process" else None
        self._open_parts()
        _lifecycle.at_fork_in_child(self._after_fork_in_child)
        _lifecycle.register(self, self.settings.handle_sigterm)

    # -- the hot path -------------------------------------------------------------------

    def log(self, name: str, value: float | int | str, step: int | None = None, **metadata: Any) -> None:
        """Record ``value`` for metric ``name``.

        Args:
            name: the metric's name; becomes ``"<name> @ <rank>"`` when a rank is set.
                The final name must fit the dashboard's 50 characters.
            value: an int or float (NaN and infinities are kept: a diverging loss must be
                visible), or a string of at most 100 characters.
            step: the step this value belongs to (default: the logger's ``step``).
            **metadata: more JSON-serialisable metadata for this record.

        Raises:
            TypeError: the name, value, step or metadata has the wrong type.
            ValueError: the name or value is too long, or metadata uses a reserved key.
            ClosedError: the logger is closed.
        """
        try:
            final = self._names[name]
        except (KeyError, TypeError):
            final = self._name(name)
        kind = type(value)
        if kind is not float and kind is not int:
            value = checked_value(final, value)
        if step is not None:
            if type(step) is not int:
                step = check_step(step)
            self._last_step = step
        ctx = self._ctx if not metadata else self._context_with(metadata)
        buffer, write = self._in.for_log
        if write is None:  # then the buffer's own append is the way in
            buffer.append((final, value, _time_ns(), step, ctx))
        else:  # durable: straight to disk, without a tuple
            write(final, value, _time_ns(), step, ctx)
        if len(buffer) >= self._wake_at:
            self._threshold()

    def log_many(self, values: Mapping[str, float | int | str], step: int | None = None, **metadata: Any) -> None:
        """Record several metrics at once; all are checked before any is recorded.

        Raises:
            TypeError, ValueError: as :meth:`log`; then nothing from ``values`` is recorded.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"log_many takes a mapping of name -> value, not {type(values).__name__}")
        if step is not None:
            step = self._last_step = check_step(step) if type(step) is not int else step
        ctx = self._ctx if not metadata else self._context_with(metadata)
        checked = []
        for name, value in values.items():
            final = self._names.get(name) if isinstance(name, str) else None
            if final is None:
                final = self._name(name)
            kind = type(value)
            checked.append((final, value if kind is float or kind is int else checked_value(final, value)))
        now = _time_ns()
        inlet = self._in
        append = inlet.append
        for final, value in checked:
            append((final, value, now, step, ctx))
        if len(inlet.buffer) >= self._wake_at:
            self._threshold()

    def increment(self, name: str, delta: float | int = 1) -> float | int:
        """Add ``delta`` to a cumulative metric and record the new running total.

        The total is posted with ``cumulative=True``; the dashboard draws it as a rate. It
        carries the current epoch and the newest step given (see :attr:`step`).

        Returns:
            The running total.

        Raises:
            ValueError: ``delta`` is negative, NaN or infinite (a total only grows).
            TypeError: ``delta`` is not a number.
        """
        kind = type(delta)
        if kind is not int and kind is not float:
            delta = check_number(delta, "delta")
        if not delta >= 0 or delta == math.inf:
            raise ValueError(f"increment({name!r}) takes a finite non-negative delta, got {delta!r}; totals only grow")
        try:
            final = self._names[name]
        except (KeyError, TypeError):
            final = self._name(name)
        with self._lock:  # totals and their order in the buffer must agree across threads
            total = self._totals.get(final, 0) + delta
            self._totals[final] = total
            self._in.append((final, total, _time_ns(), self._last_step, self._cum_ctx))
        if len(self._in.buffer) >= self._wake_at:
            self._threshold()
        return total

    def log_cumulative(self, name: str, total: float | int, step: int | None = None) -> None:
        """Record a running total kept elsewhere (a counter from psutil, say) as cumulative."""
        try:
            final = self._names[name]
        except (KeyError, TypeError):
            final = self._name(name)
        kind = type(total)
        if kind is not int and kind is not float:
            total = check_number(total, "total")
        if step is not None and type(step) is not int:
            step = check_step(step)
        self._in.append((final, total, _time_ns(), step, self._cum_ctx))
        if len(self._in.buffer) >= self._wake_at:
            self._threshold()

    def timer(self, name: str, cumulative: bool = False) -> Timer:
        """A new :class:`Timer` recording under ``name``: ``with log.timer("fwd_pass"): ...``.

        Each duration carries the current epoch and the newest step given (see :attr:`step`).

        Args:
            name: the metric's name.
            cumulative: record the running total of time spent instead of each duration.
        """
        try:
            final = self._names[name]
        except (KeyError, TypeError):
            final = self._name(name)
        return Timer(self._record_total if cumulative else self._record_duration, final, cumulative)

    def timed(self, name: str, cumulative: bool = False) -> Callable[[_F], _F]:
        """A decorator timing every call of a function: ``@log.timed("backprop")``."""
        return timed(self._record_total if cumulative else self._record_duration, self._name(name), cumulative)

    def _record_duration(self, final: str, seconds: float, cumulative: bool) -> None:
        self._in.append((final, seconds, _time_ns(), self._last_step, self._ctx))
        if len(self._in.buffer) >= self._wake_at:
            self._threshold()

    def _record_total(self, final: str, seconds: float, cumulative: bool) -> None:
        with self._lock:
            total = self._totals.get(final, 0.0) + seconds
            self._totals[final] = total
            self._in.append((final, total, _time_ns(), self._last_step, self._cum_ctx))
        if len(self._in.buffer) >= self._wake_at:
            self._threshold()

    # -- slow paths -------------------------------------------------------------------------

    def _threshold(self) -> None:
        """A batch's worth is waiting (or the buffer is full): wake the dispatcher."""
        if not self._dispatcher.started:  # the first record in a forked child
            self._start_in_child()
        dispatcher = self._dispatcher
        if len(self._in.buffer) >= self.settings.max_buffer:
            dispatcher.trim()
        self._wake_at = len(self._in.buffer) + self.settings.batch_size
        dispatcher.wake()

    # -- state ------------------------------------------------------------------------------

    def attach(self, sampler: Sampler) -> None:
        """Stop ``sampler`` when the logger closes, before the last records are taken."""
        self._samplers.append(sampler)

    def detach(self, sampler: Sampler) -> None:
        """Forget ``sampler`` (it stopped on its own)."""
        if sampler in self._samplers:
            self._samplers.remove(sampler)

    # -- delivery and lifecycle ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until everything logged before this call is stored.

        Returns:
            True when all records logged since the previous flush are stored; False when
            ``timeout`` passed first or some were dropped (see :attr:`stats`).

        Raises:
            ClosedError: the logger is closed.
        """
        if self._closed:
            raise ClosedError("this MetricsLogger is closed")
        if not self._dispatcher.started and len(self._in.buffer):
            self._start_in_child()
        return self._dispatcher.flush(timeout)

    def close(self, timeout: float | None = None, *, failed: bool | None = None) -> int:
        """Deliver what is left, then stop; calling it again does nothing.

        Sending ends within ``timeout``. What is still undelivered then is spooled when
        there is a spool, else dropped and counted; putting it on disk is local work that
        this waits for up to :data:`~mlbench_metrics.delivery.dispatcher.DISK_GRACE`
        (1 s) past ``timeout`` on a slow disk, so it returns within ``timeout + 1`` s.
        What it counts as spooled is on disk when it returns (an exit right after loses
        nothing it counted there); what a hung disk could not take by then counts as
        dropped (``"shutdown"``). Afterwards ``stats.logged == stats.stored +
        stats.spooled + stats.dropped_total`` (records folded into aggregates count as
        spooled: their raw copies are on disk).

        Args:
            timeout: seconds it may take (default ``shutdown_timeout``).
            failed: this logger ended with a failure: against the embedded server its
                run turns ``failed`` (else ``finished`` once every logger writing it
                closed); against a server without run writers, a run this logger created
                (``new_run``) is marked failed rather than finished. By default it failed
                when the program is ending with an uncaught exception or on SIGTERM.

        Returns:
            How many records were neither stored nor folded into stored aggregates
            (spooled for ``sync``, or dropped); 0 when called again.
        """
        # Not self._lock: a SIGTERM handler may call this while the same thread holds it
        # inside increment().
        with self._close_lock:
            if self._closed:
                return 0
            self._closed = True
        total = self.settings.shutdown_timeout if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + total
        liveness = self._liveness
        reporting = self._owns_run or (liveness is not None and liveness.supported is not False)
        marking = min(0.5, 0.2 * total) if reporting else 0.0  # kept for telling the server the run's end
        for sampler in list(self._samplers):  # before the buffer closes: a sample may be under way
            sampler.stop(max(0.0, deadline - marking - time.monotonic()) / 2)
        self._in = Inlet.closed()
        if self._adoption is not None:  # what it did not deliver waits for the next logger
            self._adoption.close(min(0.1, max(0.0, deadline - marking - time.monotonic())))
        self._dispatcher.close(max(0.0, deadline - marking - time.monotonic()))
        if failed is None:
            failed = _lifecycle.terminating() or getattr(sys, "last_value", None) is not None
        told = liveness is not None and liveness.close(failed, deadline - time.monotonic())
        if self._owns_run and not told:  # a server without writers: mark the run this logger made
            mark_own_run(self.client, self.run_id, "failed" if failed else "finished", deadline - time.monotonic())
        if self._own_client:
            self.client.close(timeout=max(0.0, deadline - time.monotonic()))
        _lifecycle.unregister(self)
        return self._dispatcher.stats().unsent

    def close_at_exit(self) -> str | None:
        """Close within ``shutdown_timeout``; a line for stderr when records were not stored."""
        left = self.close()
        if not left:
            return None
        stats = self.stats
        spooled = stats.spooled - stats.folded
        if not spooled:
            where = "dropped"
        elif self.agent_pid is not None:
            where = f"in {self.spool_dir}; the delivery agent (pid {self.agent_pid}) goes on delivering them"
        elif not stats.dropped_total:
            where = f"spooled in {self.spool_dir}; deliver them with: mlbench-metrics sync"
        else:
            where = f"{spooled} spooled in {self.spool_dir}, {stats.dropped_total} dropped"
        return f"mlbench-metrics: {left} records were not delivered at exit ({where})"

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives: new locks, and a buffer of its own; the store
        # and the dispatcher are built on the first record (_start_in_child), so a
        # DataLoader worker that never logs costs nothing, and one that does never sends
        # the parent's records or writes into the parent's files.
        self._lock = threading.Lock()
        self._close_lock = threading.RLock()
        self._owns_run = False  # the parent ends the run, not each child
        self._liveness = None  # nor is a child a writer of its own: its records are the parent's
        if self._closed:
            return
        self._use(placeholder_parts(self.settings, deliver_to(self.client, self.run_id)))
        self._wake_at = 1
        self._samplers = []

    def _start_in_child(self) -> None:
        """Build this process's own parts, and hand them what was logged since the fork."""
        waiting = self._store.buffer  # the placeholder's
        self._open_parts()
        append = self._in.append
        while waiting:
            append(waiting.popleft())  # type: ignore[arg-type]
        _lifecycle.register_in_child(self)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        quiet_exit = exc_type is None or (isinstance(exc, SystemExit) and exc.code in (None, 0))
        self.close(failed=None if quiet_exit else True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"MetricsLogger(run_id={self.run_id}, rank={self.rank}, endpoint={self.client.endpoint!r}, {state})"
