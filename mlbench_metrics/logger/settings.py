"""The logger's settings: its arguments and the environment, resolved and checked once.

Precedence everywhere: an explicit argument, then the environment variable, then
Kubernetes discovery (for the URL), then the default. A bad explicit value raises
:class:`~mlbench_metrics.errors.ConfigError`; a bad environment value logs a warning and
the default is used, so a stray variable cannot stop a training run.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping

from ..client.transport import endpoint_of
from ..delivery.pace import Aggregate, check_aggregate
from ..env import (
    DELIVERY_MODES,
    ENV_AGGREGATE,
    ENV_DELIVERY,
    ENV_FLUSH_INTERVAL,
    ENV_RUN_ID,
    ENV_URL,
    env_float,
    env_str,
)
from ..errors import ConfigError
from .ranks import find_placement

if TYPE_CHECKING:
    from ..client.api import ApiClient

__all__ = ["LoggerConfig", "elsewhere"]

_log = logging.getLogger("mlbench_metrics")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


@dataclass(frozen=True)
class LoggerConfig:
    """Everything a :class:`~mlbench_metrics.MetricsLogger` is told, resolved and checked.

    Built by :meth:`resolve` from the logger's arguments and the environment; each field
    is checked in ``__post_init__`` against the table in :data:`_CHECKS`, so adding a
    setting is adding a field and, where it needs one, a check. The meaning of each is
    documented on :class:`~mlbench_metrics.MetricsLogger`.

    Raises:
        ConfigError: a value is out of its range.
    """

    run_id: int | None
    rank: int | None
    flush_interval: float = 1.0
    world_size: int | None = None  # found with the rank (see ranks.py), kept in each record's metadata
    batch_size: int = 1000
    max_buffer: int = 500_000
    max_in_flight: int = 4
    shutdown_timeout: float = 10.0
    handle_sigterm: bool = True
    spool: bool = True
    spool_dir: str | os.PathLike[str] | None = None
    spool_max_bytes: int = 1 << 30
    durable: bool = False
    aggregate: Aggregate = "auto"
    new_run: str | None = None
    run_config: Mapping[str, object] | None = None  # checked by run_config.check_config
    delivery: str = "thread"

    def __post_init__(self) -> None:
        for name, ok, expected in _CHECKS:
            value = getattr(self, name)
            if not ok(value, self):
                raise ConfigError(f"{name} must be {expected}, got {value!r}")
        if self.durable and not self.spool:
            raise ConfigError("durable=True writes to the spool: it needs spool=True")
        if self.delivery == "process" and not self.spool:
            raise ConfigError("delivery='process' delivers from the spool's durable log: it needs spool=True")
        if (self.run_id is None) == (self.new_run is None):
            raise ConfigError("give the run to log to (run_id) or the name of a run to create (new_run), not both")

    @classmethod
    def resolve(
        cls,
        run_id: int | str | None,
        *,
        rank: int | None = None,
        flush_interval: float | None = None,
        aggregate: Aggregate | None = None,
        new_run: str | None = None,
        elsewhere: bool = False,
        delivery: str | None = None,
        environ: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> LoggerConfig:
        """The settings from explicit arguments, then the environment, then defaults.

        The run: ``run_id``, else ``new_run``; ``MLBENCH_METRICS_RUN_ID`` fills in when
        neither is given, and wins over ``new_run``: a process started for a run (by
        ``serve --exec``) logs to that run instead of creating one (with an info line),
        unless ``elsewhere``: the logger was pointed at another server than
        ``MLBENCH_METRICS_URL``, which has no such run.

        Raises:
            ConfigError: an argument is invalid, both runs are given, or none is.
        """
        if new_run is not None and run_id is not None:
            raise ConfigError("give run_id or new_run, not both")
        from_env = env_str(ENV_RUN_ID, environ)
        if run_id is None and from_env is not None and not (new_run is not None and elsewhere):
            if new_run is not None:
                _log.info(
                    "%s=%s is set (this process was started for that run): logging to it, not to a new run %r",
                    ENV_RUN_ID,
                    from_env,
                    new_run,
                )
                new_run = None
            run_id = from_env
        if run_id is None and new_run is None:
            raise ConfigError(f"give the run to log to: MetricsLogger(run_id=...) or {ENV_RUN_ID}")
        placement = find_placement(os.environ if environ is None else environ)
        if rank is None:
            rank = placement.rank
        if aggregate is None:
            aggregate = _env_aggregate(environ)
        if flush_interval is None:
            flush_interval = env_float(ENV_FLUSH_INTERVAL, cls.flush_interval, environ)
        if delivery is None:
            delivery = _env_delivery(environ, spool=settings.get("spool", True) is not False)
        return cls(
            run_id=None if run_id is None else _run_number(run_id),
            rank=rank,
            world_size=placement.world_size,
            aggregate=aggregate,
            flush_interval=float(flush_interval) if _is_seconds(flush_interval) else flush_interval,
            new_run=new_run,
            delivery=delivery,
            **settings,
        )


def _env_delivery(environ: Mapping[str, str] | None, *, spool: bool) -> str:
    """``MLBENCH_METRICS_DELIVERY``, else ``thread``; warns and ignores a bad value, and
    ``process`` for a logger without a spool (it has no log to deliver from)."""
    raw = env_str(ENV_DELIVERY, environ)
    if raw is None:
        return LoggerConfig.delivery
    if raw not in DELIVERY_MODES:
        _log.warning("ignoring %s=%r: not one of %s; using thread", ENV_DELIVERY, raw, ", ".join(DELIVERY_MODES))
        return LoggerConfig.delivery
    if raw == "process" and not spool:
        _log.info("%s=process does not apply to a logger with spool=False: delivering from a thread", ENV_DELIVERY)
        return LoggerConfig.delivery
    return raw


def _run_number(run_id: object) -> int:
    if isinstance(run_id, bool):
        raise ConfigError("run_id must be a positive integer, not a boolean")
    try:
        number = int(str(run_id))
    except (TypeError, ValueError):
        raise ConfigError(f"run_id must be a positive integer, got {run_id!r}") from None
    if number < 1:
        raise ConfigError(f"run_id must be a positive integer, got {run_id!r}")
    return number


# The value is Any: each check tests its type before comparing it.
_CHECKS: Final[tuple[tuple[str, Callable[[Any, LoggerConfig], bool], str], ...]] = (
    ("rank", lambda v, c: v is None or (_is_int(v) and v >= 0), "a non-negative integer or None"),
    ("world_size", lambda v, c: v is None or (_is_int(v) and v >= 1), "a positive integer or None"),
    ("flush_interval", lambda v, c: _is_seconds(v), "a positive number of seconds"),
    ("batch_size", lambda v, c: _is_int(v) and 1 <= v <= 100_000, "an integer from 1 to 100000"),
    ("max_buffer", lambda v, c: _is_int(v) and v >= c.batch_size, "an integer of at least batch_size"),
    ("max_in_flight", lambda v, c: _is_int(v) and v >= 1, "a positive integer"),
    ("shutdown_timeout", lambda v, c: _is_seconds(v), "a positive number of seconds"),
    ("aggregate", lambda v, c: _is_aggregate(v), '"auto", "off" or a positive number of seconds'),
    ("spool_max_bytes", lambda v, c: _is_int(v) and v >= 1 << 20, "an integer of at least 1 MiB"),
    ("new_run", lambda v, c: v is None or isinstance(v, str), "a run name"),
    ("delivery", lambda v, c: v in DELIVERY_MODES, "'thread' or 'process'"),
)


def _is_aggregate(value: object) -> bool:
    try:
        check_aggregate(value)
    except ConfigError:
        return False
    return True


def _env_aggregate(environ: Mapping[str, str] | None) -> Aggregate:
    raw = env_str(ENV_AGGREGATE, environ)
    if raw is None:
        return LoggerConfig.aggregate
    try:
        return check_aggregate(raw if raw in ("auto", "off") else float(raw))
    except (ValueError, ConfigError):
        _log.warning('ignoring %s=%r: not "auto", "off" or a number of seconds; using "auto"', ENV_AGGREGATE, raw)
        return LoggerConfig.aggregate


def elsewhere(url: str | None, client: ApiClient | None) -> bool:
    """Whether the logger is pointed at another server than ``MLBENCH_METRICS_URL`` names."""
    env_url = env_str(ENV_URL)
    if env_url is None or (url is None and client is None):
        return False
    try:
        return (client.endpoint if client is not None else endpoint_of(str(url))) != endpoint_of(env_url)
    except ConfigError:  # a bad address: the client says so, clearly, in a moment
        return False
