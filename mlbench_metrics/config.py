"""Settings shared by the client and the logger: environment variables and timeouts.

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
from typing import Final, Mapping, Union

from .errors import ConfigError

__all__ = [
    "ENV_FLUSH_INTERVAL",
    "ENV_RANK",
    "ENV_RUN_ID",
    "ENV_SPOOL_DIR",
    "ENV_TOKEN",
    "ENV_URL",
    "Timeouts",
    "env_float",
    "env_int",
    "env_str",
]

_log = logging.getLogger("mlbench_metrics")

ENV_URL: Final = "MLBENCH_METRICS_URL"
"""The dashboard's address (``host:port[/path]`` or a full ``http(s)://`` URL), used
when no ``url`` is given, before Kubernetes discovery is tried."""

ENV_TOKEN: Final = "MLBENCH_METRICS_TOKEN"
"""A bearer token sent as ``Authorization: Bearer <token>`` when no ``token`` is given."""

ENV_RUN_ID: Final = "MLBENCH_METRICS_RUN_ID"
"""The run to log to when a logger is given neither ``run_id`` nor ``new_run``."""

ENV_RANK: Final = "MLBENCH_METRICS_RANK"
"""This process's rank when none is given (``RANK``, as torch.distributed sets it, is
read after it)."""

ENV_SPOOL_DIR: Final = "MLBENCH_METRICS_SPOOL_DIR"
"""Where spools live (default: the user's cache directory, ``~/.cache/mlbench-metrics``)."""

ENV_FLUSH_INTERVAL: Final = "MLBENCH_METRICS_FLUSH_INTERVAL"
"""Seconds between the dispatcher's deliveries when no ``flush_interval`` is given."""


def env_str(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, or None when it is unset or blank."""
    value = (os.environ if environ is None else environ).get(name, "").strip()
    return value or None


def env_float(name: str, default: float, environ: Mapping[str, str] | None = None) -> float:
    """The variable as a positive float; warns and returns ``default`` when it is not one."""
    raw = env_str(name, environ)
    if raw is None:
        return default
    try:
        value = float(raw)
        if not math.isfinite(value) or value <= 0:
            raise ValueError
    except ValueError:
        _log.warning("ignoring %s=%r: not a positive number; using %s", name, raw, default)
        return default
    return value


def env_int(name: str, default: int | None, environ: Mapping[str, str] | None = None) -> int | None:
    """The variable as a non-negative int; warns and returns ``default`` when it is not one."""
    raw = env_str(name, environ)
    if raw is None:
        return default
    try:
        value = int(raw)
        if value < 0:
            raise ValueError
    except ValueError:
        _log.warning("ignoring %s=%r: not a non-negative integer; using %s", name, raw, default)
        return default
    return value


TimeoutLike = Union["Timeouts", float, int, tuple[float, float], None]


@dataclass(frozen=True)
class Timeouts:
    """Connect and read timeouts in seconds, applied to every request.

    ========================== ==========================================
    ``Timeouts()``             connect 5 s, read 60 s (the defaults)
    ``Timeouts(read=180)``     as upstream's ``post_metric`` waited
    ``Timeouts.of(10)``        10 s for both
    ``Timeouts.of((2, 30))``   connect 2 s, read 30 s
    ========================== ==========================================
    """

    connect: float = 5.0
    read: float = 60.0

    def __post_init__(self) -> None:
        for name in ("connect", "read"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"the {name} timeout must be a positive number of seconds, got {value!r}")

    @classmethod
    def of(cls, value: TimeoutLike) -> Timeouts:
        """Timeouts from a :class:`Timeouts`, a number, a ``(connect, read)`` pair or None."""
        if value is None:
            return cls()
        if isinstance(value, Timeouts):
            return value
        if isinstance(value, tuple) and len(value) == 2:
            return cls(float(value[0]), float(value[1]))
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(float(value), float(value))
        raise ConfigError(f"timeout must be seconds, a (connect, read) pair or Timeouts, got {value!r}")

    def as_tuple(self) -> tuple[float, float]:
        """``(connect, read)``, as requests takes it."""
        return (self.connect, self.read)
