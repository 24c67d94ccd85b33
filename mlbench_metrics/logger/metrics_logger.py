"""MetricsLogger: what the training loop touches.

``log``, ``increment`` and timers validate, stamp the time and append one tuple to the
store's buffer (in durable mode: write one slot of the log): no network, no lock on the
plain path. A record that would be refused later is refused here, at the call, with an
error naming the field and the limit; once accepted, a record is stored, spooled, or
counted in ``stats.dropped``, never silently lost.

The logger builds its parts and passes them in: a :class:`LoggerConfig`, a store
(memory, spool or durable: see ``delivery/store.py``), a :class:`Dispatcher` that owns
the one delivery thread, and ``deliver`` (``ApiClient.post_metrics`` for its run). Exit,
SIGTERM and fork hooks are ``_lifecycle``'s; the module-level API (``init``, ``log``,
``finish``...) is ``current``'s. After ``os.fork()`` the child starts empty and builds
its own parts on its first record. This module starts no threads itself.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Final, Mapping, Protocol, TypeVar

from .. import _lifecycle
from ..client.api import ApiClient
from ..client.transport import endpoint_of
from ..delivery import Stats
from ..env import ENV_URL, env_str
from ..errors import ClosedError, ConfigError
from ..records import Context, check_name, check_number, check_step, coerce_value
from ..records.batch import Record
from ..records.checks import Value
from ..timing import Timer, timed
from .own_run import create_own_run, mark_own_run
from .parts import Parts, open_parts, placeholder_parts
from .run_config import check_config, send_config
from .settings import LoggerConfig

__all__ = ["MetricsLogger", "Sampler"]

_log = logging.getLogger("mlbench_metrics")
_F = TypeVar("_F", bound=Callable[..., Any])

_time_ns: Final = time.time_ns
_RESERVED_METADATA: Final = frozenset({"rank", "epoch", "step"})


class Sampler(Protocol):
    """Something that records into a logger from its own thread (``SystemMetrics``)."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop recording and join the thread."""


class _Buffer(Protocol):
    """What the hot path appends to: the store's deque, or the closed stand-in."""

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


class MetricsLogger:
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
        rank: this process's rank (else ``MLBENCH_METRICS_RANK``, else ``RANK``, else none).
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
            dashboard cannot, and a warning says so). See :mod:`mlbench_metrics.run_config`.
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
        self.settings = LoggerConfig.resolve(
            run_id,
            rank=rank,
            flush_interval=flush_interval,
            new_run=new_run,
            elsewhere=_elsewhere(url, client),
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
        self._own_client = client is None
        self._token = token
        # The logger keeps its strict checks: it refuses at the call what the dashboard would.
        self.client = client if client is not None else ApiClient(url=url, token=token, strict=True)
        self._owns_run = self.settings.new_run is not None
        try:
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
        self._names: dict[object, str] = {}
        self._totals: dict[str, float] = {}
        self._epoch = 0
        self._step: int | None = None
        self._samplers: list[Sampler] = []
        self._rebuild_contexts()
        self._open_parts()
        _lifecycle.at_fork_in_child(self._after_fork_in_child)
        _lifecycle.register(self, self.settings.handle_sigterm)

    # -- the parts ------------------------------------------------------------------------

    def _open_parts(self) -> None:
        """Build the store and the dispatcher; point the hot path at the store's buffer."""
        client = self.client  # not self: the dispatcher's thread must not keep the logger alive
        self._use(
            open_parts(
                self.settings,
                functools.partial(client.post_metrics, self.run_id),
                batch_supported=lambda: client.batch_supported,
                run_id=self.run_id,
                endpoint=client.endpoint,
                on_frozen=self._on_log_frozen,
                on_drained=_lifecycle.weak_call(self._reset_wake_threshold),
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
        self._buf: _Buffer = parts.store.buffer
        self._append = parts.append
        self._write = parts.write

    def _on_log_frozen(self) -> None:
        """The durable log cannot grow: from now on the hot path appends to memory."""
        self._write = None
        self._append = self._store.buffer.append

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
            value = _value(final, value)
        if step is not None and type(step) is not int:
            step = check_step(step)
        ctx = self._ctx if not metadata else self._context_with(metadata)
        write = self._write
        if write is None:
            self._buf.append((final, value, _time_ns(), step, ctx))
        else:  # durable: straight to disk, without a tuple
            write(final, value, _time_ns(), step, ctx)
        if len(self._buf) >= self._wake_at:
            self._threshold()

    def log_many(self, values: Mapping[str, float | int | str], step: int | None = None, **metadata: Any) -> None:
        """Record several metrics at once; all are checked before any is recorded.

        Raises:
            TypeError, ValueError: as :meth:`log`; then nothing from ``values`` is recorded.
        """
        if not isinstance(values, Mapping):
            raise TypeError(f"log_many takes a mapping of name -> value, not {type(values).__name__}")
        if step is not None and type(step) is not int:
            step = check_step(step)
        ctx = self._ctx if not metadata else self._context_with(metadata)
        checked = []
        for name, value in values.items():
            final = self._names.get(name) if isinstance(name, str) else None
            if final is None:
                final = self._name(name)
            kind = type(value)
            checked.append((final, value if kind is float or kind is int else _value(final, value)))
        now = _time_ns()
        append = self._append
        for final, value in checked:
            append((final, value, now, step, ctx))
        if len(self._buf) >= self._wake_at:
            self._threshold()

    def increment(self, name: str, delta: float | int = 1) -> float | int:
        """Add ``delta`` to a cumulative metric and record the new running total.

        The total is posted with ``cumulative=True``; the dashboard draws it as a rate.

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
            self._append((final, total, _time_ns(), None, self._cum_ctx))
        if len(self._buf) >= self._wake_at:
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
        self._append((final, total, _time_ns(), step, self._cum_ctx))
        if len(self._buf) >= self._wake_at:
            self._threshold()

    def timer(self, name: str, cumulative: bool = False) -> Timer:
        """A new :class:`Timer` recording under ``name``: ``with log.timer("fwd_pass"): ...``.

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
        self._append((final, seconds, _time_ns(), None, self._ctx))
        if len(self._buf) >= self._wake_at:
            self._threshold()

    def _record_total(self, final: str, seconds: float, cumulative: bool) -> None:
        with self._lock:
            total = self._totals.get(final, 0.0) + seconds
            self._totals[final] = total
            self._append((final, total, _time_ns(), None, self._cum_ctx))
        if len(self._buf) >= self._wake_at:
            self._threshold()

    # -- slow paths -------------------------------------------------------------------------

    def _name(self, name: object) -> str:
        """Check a new metric name and remember its final form."""
        if not isinstance(name, str):
            raise TypeError(f"a metric name must be a string, not {type(name).__name__}")
        suffix = f" @ {self.rank}" if self.rank is not None else ""
        final = name if not suffix or name.endswith(suffix) or not name.strip() else name + suffix
        self._names[name] = check_name(final)
        return final

    def _context_with(self, metadata: Mapping[str, Any]) -> Context:
        reserved = _RESERVED_METADATA.intersection(metadata)
        if reserved:
            raise ValueError(
                f"metadata key(s) {sorted(reserved)} are set by the logger: pass step=, set logger.epoch or rank="
            )
        try:
            text = json.dumps(dict(metadata), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"metadata must be JSON-serialisable (finite numbers, strings, lists, dicts): {exc}"
            ) from None
        return Context(self.rank, self._epoch, self._step, False, ", " + text[1:-1])

    def _threshold(self) -> None:
        """A batch's worth is waiting (or the buffer is full): wake the dispatcher."""
        if not self._dispatcher.started:  # the first record in a forked child
            self._start_in_child()
        dispatcher = self._dispatcher
        if len(self._buf) >= self.settings.max_buffer:
            dispatcher.trim()
        self._wake_at = len(self._buf) + self.settings.batch_size
        dispatcher.wake()

    def _reset_wake_threshold(self) -> None:
        self._wake_at = self.settings.batch_size

    def _rebuild_contexts(self) -> None:
        self._ctx = Context(self.rank, self._epoch, self._step)
        self._cum_ctx = Context(self.rank, self._epoch, self._step, True)

    # -- settings and state ------------------------------------------------------------------

    @property
    def rank(self) -> int | None:
        """This process's rank (None: names are kept as given)."""
        return self.settings.rank

    @property
    def batch_size(self) -> int:
        """Records per batch."""
        return self.settings.batch_size

    @property
    def flush_interval(self) -> float:
        """Seconds between deliveries when fewer than a batch arrive."""
        return self.settings.flush_interval

    @property
    def max_buffer(self) -> int:
        """Records held in memory at most."""
        return self.settings.max_buffer

    @property
    def shutdown_timeout(self) -> float:
        """Seconds ``close()`` (and the exit hook) may take."""
        return self.settings.shutdown_timeout

    @property
    def durable(self) -> bool:
        """Whether every record is written to disk before ``log()`` returns."""
        return self._write is not None

    @property
    def epoch(self) -> int:
        """The current epoch, in every record's metadata (starts at 0)."""
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"epoch must be a non-negative integer, got {value!r}")
        self._epoch = value
        self._rebuild_contexts()

    def epoch_end(self) -> int:
        """Move on to the next epoch; returns the new epoch number."""
        self.epoch = self._epoch + 1
        return self._epoch

    @property
    def step(self) -> int | None:
        """The default step for records logged without ``step=`` (None: no step)."""
        return self._step

    @step.setter
    def step(self, value: int | None) -> None:
        self._step = None if value is None else check_step(value)
        self._rebuild_contexts()

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

    def attach(self, sampler: Sampler) -> None:
        """Stop ``sampler`` when the logger closes, before the last records are taken."""
        self._samplers.append(sampler)

    def detach(self, sampler: Sampler) -> None:
        """Forget ``sampler`` (it stopped on its own)."""
        if sampler in self._samplers:
            self._samplers.remove(sampler)

    # -- delivery and lifecycle ---------------------------------------------------------------

    @property
    def stats(self) -> Stats:
        """Counters: logged, stored, retried, dropped (by reason), spooled, in flight, ..."""
        return self._dispatcher.stats()

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
        if not self._dispatcher.started and len(self._buf):
            self._start_in_child()
        return self._dispatcher.flush(timeout)

    def close(self, timeout: float | None = None, *, failed: bool | None = None) -> int:
        """Deliver what is left, then stop; calling it again does nothing.

        Returns within ``timeout``. What is still undelivered then is spooled when there
        is a spool, else dropped and counted. Afterwards ``stats.logged == stats.stored +
        stats.spooled + stats.dropped_total`` (records folded into aggregates count as
        spooled: their raw copies are on disk).

        Args:
            timeout: seconds it may take (default ``shutdown_timeout``).
            failed: for a run this logger created (``new_run``): mark it failed rather
                than finished. By default it is failed when the program is ending with
                an uncaught exception or on SIGTERM.

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
        marking = min(0.5, 0.2 * total) if self._owns_run else 0.0  # kept for marking the run
        for sampler in list(self._samplers):  # before the buffer closes: a sample may be under way
            sampler.stop(max(0.0, deadline - marking - time.monotonic()) / 2)
        self._write = None
        self._buf = _ClosedBuffer()
        self._append = self._buf.append
        if self._adoption is not None:  # what it did not deliver waits for the next logger
            self._adoption.close(min(0.1, max(0.0, deadline - marking - time.monotonic())))
        self._dispatcher.close(max(0.0, deadline - marking - time.monotonic()))
        if self._owns_run:
            if failed is None:
                failed = _lifecycle.terminating() or getattr(sys, "last_value", None) is not None
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
        if self._closed:
            return
        self._use(placeholder_parts(self.settings, functools.partial(self.client.post_metrics, self.run_id)))
        self._wake_at = 1
        self._samplers = []

    def _start_in_child(self) -> None:
        """Build this process's own parts, and hand them what was logged since the fork."""
        waiting = self._store.buffer  # the placeholder's
        self._open_parts()
        append = self._append
        while waiting:
            record = waiting.popleft()
            append(record)  # type: ignore[arg-type]
        _lifecycle.register_in_child(self)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        quiet_exit = exc_type is None or (isinstance(exc, SystemExit) and exc.code in (None, 0))
        self.close(failed=None if quiet_exit else True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"MetricsLogger(run_id={self.run_id}, rank={self.rank}, endpoint={self.client.endpoint!r}, {state})"


def _value(name: str, value: object) -> Value:
    """A value that is not exactly an int or a float: convert it, or refuse it clearly."""
    try:
        return coerce_value(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"metric {name!r}: {exc}") from None


def _elsewhere(url: str | None, client: ApiClient | None) -> bool:
    """Whether the logger is pointed at another server than ``MLBENCH_METRICS_URL`` names."""
    env_url = env_str(ENV_URL)
    if env_url is None or (url is None and client is None):
        return False
    try:
        return (client.endpoint if client is not None else endpoint_of(str(url))) != endpoint_of(env_url)
    except ConfigError:  # a bad address: the client says so, clearly, in a moment
        return False
