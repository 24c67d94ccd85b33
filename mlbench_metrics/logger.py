"""MetricsLogger: what the training loop touches, and the module-level API around it.

``log``, ``increment`` and timers validate, stamp the time and append one tuple to the
dispatcher's buffer: no I/O, no lock on the plain path, no waiting on the network. A
record that would be refused later is refused here, at the call, with an error naming
the field and the limit; once accepted, a record is delivered, spooled, or counted in
``stats.dropped``, never silently lost.

Lifecycle, owned by each logger: its dispatcher thread starts in the constructor;
``close()`` (idempotent) flushes to a deadline and stops it. One process-wide exit hook
closes every live logger at interpreter exit (before ``concurrent.futures`` joins its
threads), and on SIGTERM when the program has no handler of its own. After
``os.fork()`` the child starts empty and starts its own dispatcher on its first record.
This module starts no threads itself.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (imported first: our exit hook must run before its own)
import functools
import json
import logging
import math
import numbers
import os
import signal
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Final, Mapping, TypeVar

from ._dispatch import Context, Dispatcher, Stats, encode_columns
from .api import ApiClient, _weak_call
from .config import ENV_FLUSH_INTERVAL, ENV_RANK, ENV_RUN_ID, env_float, env_int, env_str
from .errors import ClosedError, ConfigError
from .records import NAME_MAX, VALUE_MAX
from .run_config import check_config, send_config
from .spool import DurableBuffer, DurableLog, DurableStore, SpoolDir, SpoolStore
from .timing import Timer, timed

__all__ = [
    "MetricsLogger",
    "current",
    "finish",
    "flush",
    "increment",
    "init",
    "log",
    "log_many",
    "timed_call",
    "timer",
]

_log = logging.getLogger("mlbench_metrics")
_F = TypeVar("_F", bound=Callable[..., Any])

_time_ns: Final = time.time_ns
_RESERVED_METADATA: Final = frozenset({"rank", "epoch", "step"})


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
        shutdown_timeout: seconds ``close()`` (and the exit hook) may spend delivering.
        handle_sigterm: on SIGTERM, when the program has no handler of its own, flush
            within ``shutdown_timeout`` and then end as SIGTERM would.
        token: a bearer token for the client the logger creates.
        spool: keep what cannot be delivered (or held in memory) on disk and send it
            from there later; False drops it instead (counted in ``stats.dropped``).
        spool_dir: the spool's root (else ``MLBENCH_METRICS_SPOOL_DIR``, else
            ``~/.cache/mlbench-metrics/spool``); a directory per run and process inside.
        spool_max_bytes: the most this process's spool may take on disk (at least 1 MiB;
            a durable log keeps at least two 16 MiB segments); past it the oldest
            spooled records are deleted and counted (``"spool_full"``).
        durable: write every record to a memory-mapped file before ``log()`` returns,
            so a process killed at any moment (SIGKILL, OOM) loses nothing logged;
            ``mlbench-metrics sync`` delivers what it left.
        new_run: instead of ``run_id``, create a run with this name (a custom run whose
            command is this program's) and log to it; ``close()`` marks it finished,
            or failed when the program ends with an uncaught exception or SIGTERM
            (where the server supports run states; the dashboard does not).
        config: the run's configuration (hyperparameters), a JSON-serialisable mapping
            stored once with the run where the server can (the embedded server; the
            dashboard cannot, and a warning says so). See :mod:`mlbench_metrics.run_config`.

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
        batch_size: int = 1000,
        max_buffer: int = 500_000,
        max_in_flight: int = 4,
        shutdown_timeout: float = 10.0,
        handle_sigterm: bool = True,
        token: str | None = None,
        spool: bool = True,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 1 << 30,
        durable: bool = False,
        new_run: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if new_run is not None and run_id is not None:
            raise ConfigError("give run_id or new_run, not both")
        run_config = None if config is None else check_config(config)
        self.run_id = _resolve_run_id(run_id) if new_run is None else 0
        self.rank = _resolve_rank(rank)
        self.flush_interval = _positive(
            flush_interval if flush_interval is not None else env_float(ENV_FLUSH_INTERVAL, 1.0), "flush_interval"
        )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 100_000:
            raise ConfigError(f"batch_size must be an integer from 1 to 100000, got {batch_size!r}")
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < batch_size:
            raise ConfigError(
                f"max_buffer must be an integer of at least batch_size ({batch_size}), got {max_buffer!r}"
            )
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ConfigError(f"max_in_flight must be a positive integer, got {max_in_flight!r}")
        self.shutdown_timeout = _positive(shutdown_timeout, "shutdown_timeout")
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        if isinstance(spool_max_bytes, bool) or not isinstance(spool_max_bytes, int) or spool_max_bytes < 1 << 20:
            raise ConfigError(f"spool_max_bytes must be an integer of at least 1 MiB, got {spool_max_bytes!r}")
        if durable and not spool:
            raise ConfigError("durable=True writes to the spool: it needs spool=True")
        self.durable = durable
        self._spool_options = (spool, spool_dir, spool_max_bytes)

        self._own_client = client is None
        self.client = client if client is not None else ApiClient(url=url, token=token, strict=True)
        self._owns_run = new_run is not None
        if new_run is not None:
            try:
                self.run_id = _create_own_run(self.client, new_run)
            except BaseException:
                if self._own_client:
                    self.client.close()
                raise
        if run_config is not None:
            send_config(self.client, self.run_id, run_config)
        self._lock = threading.Lock()
        self._close_lock = threading.RLock()
        self._closed = False
        self._names: dict[Any, str] = {}
        self._totals: dict[str, float] = {}
        self._epoch = 0
        self._step: int | None = None
        self._samplers: list[Any] = []
        self._rebuild_contexts()

        self._dispatcher = Dispatcher(
            functools.partial(self.client.post_metrics, self.run_id),
            batch_size=batch_size,
            flush_interval=self.flush_interval,
            max_buffer=max_buffer,
            max_in_flight=max_in_flight,
            on_drained=_weak_call(self._reset_wake_threshold),
        )
        self._buf: Any = None
        self._write: Callable[[str, Any, int, int | None, Context], None] | None = None
        self._open_buffer()
        self._wake_at = batch_size
        self._dispatcher.start()
        os.register_at_fork(after_in_child=_weak_call(self._after_fork_in_child))
        _register(self, handle_sigterm)

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
            value = _check_value(final, value)
        if step is not None and type(step) is not int:
            step = _check_step(step)
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
            step = _check_step(step)
        ctx = self._ctx if not metadata else self._context_with(metadata)
        checked = []
        for name, value in values.items():
            final = self._names.get(name) if isinstance(name, str) else None
            if final is None:
                final = self._name(name)
            kind = type(value)
            checked.append((final, value if kind is float or kind is int else _check_value(final, value)))
        now = _time_ns()
        buf = self._buf
        for final, value in checked:
            buf.append((final, value, now, step, ctx))
        if len(buf) >= self._wake_at:
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
            delta = _check_number(delta, "delta")
        if not delta >= 0 or delta == math.inf:
            raise ValueError(f"increment({name!r}) takes a finite non-negative delta, got {delta!r}; totals only grow")
        try:
            final = self._names[name]
        except (KeyError, TypeError):
            final = self._name(name)
        with self._lock:  # totals and their order in the buffer must agree across threads
            total = self._totals.get(final, 0) + delta
            self._totals[final] = total
            self._buf.append((final, total, _time_ns(), None, self._cum_ctx))
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
            total = _check_number(total, "total")
        if step is not None and type(step) is not int:
            step = _check_step(step)
        self._buf.append((final, total, _time_ns(), step, self._cum_ctx))
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
        buf = self._buf
        buf.append((final, seconds, _time_ns(), None, self._ctx))
        if len(buf) >= self._wake_at:
            self._threshold()

    def _record_total(self, final: str, seconds: float, cumulative: bool) -> None:
        with self._lock:
            total = self._totals.get(final, 0.0) + seconds
            self._totals[final] = total
            self._buf.append((final, total, _time_ns(), None, self._cum_ctx))
        if len(self._buf) >= self._wake_at:
            self._threshold()

    # -- slow paths -------------------------------------------------------------------------

    def _name(self, name: Any) -> str:
        """Check a new metric name and remember its final form."""
        if not isinstance(name, str):
            raise TypeError(f"a metric name must be a string, not {type(name).__name__}")
        if not name.strip():
            raise ValueError("a metric name must not be empty")
        suffix = f" @ {self.rank}" if self.rank is not None else ""
        final = name if not suffix or name.endswith(suffix) else name + suffix
        if len(final) > NAME_MAX:
            raise ValueError(
                f"metric name {final!r} is {len(final)} characters long; the dashboard keeps at most {NAME_MAX}"
            )
        self._names[name] = final
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
        dispatcher = self._dispatcher
        if not dispatcher.started:  # the first record in a forked child
            dispatcher.start()
        if len(self._buf) >= self.max_buffer:
            dispatcher.trim()
        self._wake_at = len(self._buf) + self.batch_size
        dispatcher.wake()

    def _open_buffer(self) -> None:
        """Give the dispatcher its disk store; set the buffer (and writer) the hot path uses."""
        spool, spool_dir, max_bytes = self._spool_options
        dispatcher = self._dispatcher
        self._buf, self._write = dispatcher.buffer, None
        if not spool:
            return
        meta = {"endpoint": self.client.endpoint, "durable": self.durable, "batch_size": self.batch_size}
        directory = SpoolDir(spool_dir, self.run_id, meta)
        if not self.durable:
            dispatcher.store = SpoolStore(
                directory, max_bytes, functools.partial(dispatcher.count_dropped, "spool_full")
            )
            return

        def open_log() -> DurableLog:
            log = DurableLog(directory, max_bytes)
            dispatcher.store = DurableStore(log, encode_columns)
            return log

        buffer = DurableBuffer(open_log)
        dispatcher.buffer = buffer  # the dispatcher drains it like any deque
        self._buf, self._write = buffer, buffer.write

    @property
    def spool_dir(self) -> Path | None:
        """This process's spool directory, when something was written there."""
        store = self._dispatcher.store
        if store is None or not store.dir.created:
            return None
        return Path(store.dir.path)

    def _reset_wake_threshold(self) -> None:
        self._wake_at = self.batch_size

    def _rebuild_contexts(self) -> None:
        self._ctx = Context(self.rank, self._epoch, self._step)
        self._cum_ctx = Context(self.rank, self._epoch, self._step, True)

    # -- step and epoch ----------------------------------------------------------------------

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
        self._step = None if value is None else _check_step(value)
        self._rebuild_contexts()

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
            self._dispatcher.start()
        return self._dispatcher.flush(timeout)

    def close(self, timeout: float | None = None, *, failed: bool | None = None) -> int:
        """Deliver what is left, then stop; calling it again does nothing.

        Args:
            timeout: seconds to spend delivering (default ``shutdown_timeout``). What is
                still undelivered then is spooled when there is a spool, else dropped and
                counted.
            failed: for a run this logger created (``new_run``): mark it failed rather
                than finished. By default it is failed when the program is ending with
                an uncaught exception or on SIGTERM.

        Returns:
            How many records were not delivered.
        """
        # Not self._lock: a SIGTERM handler may call this while the same thread holds it
        # inside increment().
        with self._close_lock:
            if self._closed:
                return 0
            self._closed = True
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else max(0.0, timeout))
        for sampler in list(self._samplers):  # before the buffer closes: a sample may be under way
            sampler.stop(max(0.0, deadline - time.monotonic()))
        self._write = None
        self._buf = _ClosedBuffer()
        left = self._dispatcher.close(max(0.0, deadline - time.monotonic()))
        if self._owns_run:
            if failed is None:
                failed = _terminating or getattr(sys, "last_value", None) is not None
            self._mark_own_run("failed" if failed else "finished", max(0.5, deadline - time.monotonic()))
        if self._own_client:
            self.client.close(timeout=max(0.0, deadline - time.monotonic()))
        _unregister(self)
        return left

    def _mark_own_run(self, state: str, timeout: float) -> None:
        try:
            answer = self.client.set_run_state(self.run_id, state).result(timeout)
        except Exception as exc:  # closing must not raise: say it and go on
            _log.warning("mlbench-metrics: could not mark run %s %s: %s", self.run_id, state, exc)
            return
        if answer.status_code == 405:
            _log.info("mlbench-metrics: the server cannot mark runs %s (the dashboard ends runs itself)", state)
        elif answer.status_code >= 400:
            _log.warning("mlbench-metrics: marking run %s %s answered %s", self.run_id, state, answer.status_code)

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives: new locks, an empty buffer, and a dispatcher
        # that starts on the first record, so a DataLoader worker that never logs costs
        # nothing and one that does never re-sends the parent's records.
        self._lock = threading.Lock()
        self._close_lock = threading.RLock()
        self._owns_run = False  # the parent ends the run, not each child
        if self._closed:
            return
        self._dispatcher.after_fork_in_child()
        self._open_buffer()  # the child's own spool, never the parent's
        self._wake_at = 1
        self._samplers = []
        _register_in_child(self)

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        quiet_exit = exc_type is None or (isinstance(exc, SystemExit) and exc.code in (None, 0))
        self.close(failed=None if quiet_exit else True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"MetricsLogger(run_id={self.run_id}, rank={self.rank}, endpoint={self.client.endpoint!r}, {state})"


# -- argument checks (slow paths) -------------------------------------------------------------


def _resolve_run_id(run_id: int | str | None) -> int:
    if run_id is None:
        run_id = env_str(ENV_RUN_ID)
        if run_id is None:
            raise ConfigError(f"give the run to log to: MetricsLogger(run_id=...) or {ENV_RUN_ID}")
    if isinstance(run_id, bool):
        raise ConfigError("run_id must be a positive integer, not a boolean")
    try:
        number = int(run_id)
    except (TypeError, ValueError):
        raise ConfigError(f"run_id must be a positive integer, got {run_id!r}") from None
    if number < 1:
        raise ConfigError(f"run_id must be a positive integer, got {run_id!r}")
    return number


def _create_own_run(client: ApiClient, name: str) -> int:
    """Create the run a ``new_run=`` logger logs to: a custom run of this program."""
    from .runs import Run  # runs imports api only; imported here to keep logger's imports light

    command = " ".join([os.path.basename(sys.executable), *sys.argv]) or "python"
    try:
        run = Run.create(
            name, 1, custom_image_name="local", custom_image_command=command, custom_backend="local", client=client
        )
    except ValueError as exc:
        raise ConfigError(f"new_run: {exc}") from None
    return run.id


def _resolve_rank(rank: int | None) -> int | None:
    if rank is None:
        return env_int(ENV_RANK, env_int("RANK", None))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ConfigError(f"rank must be a non-negative integer or None, got {rank!r}")
    return rank


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_value(name: str, value: Any) -> float | int | str:
    """A value that is not exactly an int or a float: convert it, or refuse it clearly."""
    if isinstance(value, bool) or value is None:
        raise TypeError(f"metric {name!r}: a value must be a number or a string, not {value!r}")
    if isinstance(value, str):
        if len(value) > VALUE_MAX:
            raise ValueError(
                f"metric {name!r}: a string value is {len(value)} characters long; "
                f"the dashboard keeps at most {VALUE_MAX}"
            )
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # a 0-d tensor or array
    if callable(item):
        try:
            return _check_value(name, item())
        except (TypeError, ValueError):
            pass
    if hasattr(type(value), "__float__") and not isinstance(value, complex):  # Decimal, and the like
        try:
            return float(value)
        except (TypeError, ValueError, ArithmeticError):
            pass
    raise TypeError(f"metric {name!r}: a value must be an int, a float or a string, not {type(value).__name__}")


def _check_number(value: Any, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an integer, not {type(step).__name__}")
    return int(step)


# -- the process-wide exit hook and SIGTERM handler ----------------------------------------------

_live: weakref.WeakSet[MetricsLogger] = weakref.WeakSet()
_terminating = False  # SIGTERM arrived: runs this process created end as failed
_hooks_lock = threading.Lock()
_exit_hook_installed = False
_sigterm_installed = False


def _register(logger: MetricsLogger, handle_sigterm: bool) -> None:
    global _exit_hook_installed, _sigterm_installed
    with _hooks_lock:
        _live.add(logger)
        if not _exit_hook_installed:
            _install_exit_hook()
            _exit_hook_installed = True
        if handle_sigterm and not _sigterm_installed and threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True


def _unregister(logger: MetricsLogger) -> None:
    with _hooks_lock:
        _live.discard(logger)


def _install_exit_hook() -> None:
    """One hook for the process: close every live logger at interpreter exit.

    ``threading._register_atexit`` hooks run before non-daemon threads are joined, so
    ours runs while our dispatcher and the client's threads are still alive, and before
    ``concurrent.futures`` waits for its workers (hooks run last-registered first).
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(_close_all_at_exit)
            return
        except RuntimeError:  # already shutting down
            pass
    atexit.register(_close_all_at_exit)


_finalizer_pid: int | None = None


def _register_in_child(logger: MetricsLogger) -> None:
    """A multiprocessing child ends with ``os._exit()``, which skips interpreter exit
    hooks but runs multiprocessing's finalizers: close the child's loggers there too."""
    global _finalizer_pid
    if _finalizer_pid == os.getpid():
        return
    _finalizer_pid = os.getpid()
    from multiprocessing import util

    util.Finalize(None, _close_all_at_exit, exitpriority=100)


def _reset_hooks_lock() -> None:
    global _hooks_lock
    _hooks_lock = threading.Lock()  # another thread may have held it when we forked


os.register_at_fork(after_in_child=_reset_hooks_lock)


def _close_all_at_exit() -> None:
    for logger in list(_live):
        try:
            left = logger.close()
        except Exception:  # the exit path must not raise
            _log.exception("mlbench-metrics: closing a logger at exit failed")
            continue
        if left:
            stats = logger.stats
            where = f"{stats.spooled} spooled" if stats.spooled else "dropped"
            print(f"mlbench-metrics: {left} records were not delivered at exit ({where})", file=sys.stderr)


def _on_sigterm(signum: int, frame: object) -> None:
    """Flush within each logger's shutdown_timeout, then end as SIGTERM would."""
    global _terminating
    _terminating = True
    _close_all_at_exit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


# -- the module-level API -----------------------------------------------------------------

_current: MetricsLogger | None = None


def init(run_id: int | str | None = None, **kwargs: Any) -> MetricsLogger:
    """Create a :class:`MetricsLogger`, make it the current one and return it.

    A current logger from an earlier ``init()`` is closed first. Arguments are those of
    :class:`MetricsLogger`.
    """
    global _current
    if _current is not None and not _current.closed:
        _current.close()
    _current = MetricsLogger(run_id, **kwargs)
    return _current


def current() -> MetricsLogger:
    """The logger the module-level functions use.

    Raises:
        ClosedError: there is none (call ``init()`` first).
    """
    if _current is None:
        raise ClosedError("no current logger: call mlbench_metrics.init(run_id, ...) first")
    return _current


def log(name: str, value: float | int | str, step: int | None = None, **metadata: Any) -> None:
    """:meth:`MetricsLogger.log` on the current logger."""
    current().log(name, value, step, **metadata)


def log_many(values: Mapping[str, float | int | str], step: int | None = None, **metadata: Any) -> None:
    """:meth:`MetricsLogger.log_many` on the current logger."""
    current().log_many(values, step, **metadata)


def increment(name: str, delta: float | int = 1) -> float | int:
    """:meth:`MetricsLogger.increment` on the current logger."""
    return current().increment(name, delta)


def timer(name: str, cumulative: bool = False) -> Timer:
    """:meth:`MetricsLogger.timer` on the current logger."""
    return current().timer(name, cumulative)


def timed_call(name: str, cumulative: bool = False) -> Callable[[_F], _F]:
    """:meth:`MetricsLogger.timed` on the current logger (exported as ``timed``)."""
    return current().timed(name, cumulative)


def flush(timeout: float | None = 30.0) -> bool:
    """:meth:`MetricsLogger.flush` on the current logger."""
    return current().flush(timeout)


def finish(timeout: float | None = None, *, failed: bool | None = None) -> int:
    """Close the current logger (see :meth:`MetricsLogger.close`); returns undelivered records."""
    global _current
    logger, _current = _current, None
    return 0 if logger is None else logger.close(timeout, failed=failed)
