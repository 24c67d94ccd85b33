"""The environment variables the package reads, and the readers that check them.

One owner for their names: the logger's settings, the client, the spool, the agent and
the server's ``--exec`` all read the constants here. A bad explicit value raises
:class:`~mlbench_metrics.errors.ConfigError` where it is given; a bad environment value
logs a warning and the default is used, so a stray variable cannot stop a training run.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Final, Mapping

__all__ = [
    "DELIVERY_MODES",
    "ENV_AGENT_LINGER",
    "ENV_AGGREGATE",
    "ENV_DELIVERY",
    "ENV_FLUSH_INTERVAL",
    "ENV_RANK",
    "ENV_RUN_ID",
    "ENV_SPOOL_DIR",
    "ENV_TOKEN",
    "ENV_URL",
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

ENV_AGGREGATE: Final = "MLBENCH_METRICS_AGGREGATE"
"""``auto``, ``off`` or seconds: the logger's ``aggregate`` when none is given."""

ENV_RUN_ID: Final = "MLBENCH_METRICS_RUN_ID"
"""The run to log to when a logger is given neither ``run_id`` nor ``new_run``."""

ENV_RANK: Final = "MLBENCH_METRICS_RANK"
"""This process's rank when none is given; read before an initialised torch.distributed
process group and the launchers' variables (see ``mlbench_metrics.logger.ranks``)."""

ENV_SPOOL_DIR: Final = "MLBENCH_METRICS_SPOOL_DIR"
"""Where spools live (default: the user's cache directory, ``~/.cache/mlbench-metrics``)."""

ENV_FLUSH_INTERVAL: Final = "MLBENCH_METRICS_FLUSH_INTERVAL"
"""Seconds between the dispatcher's deliveries when no ``flush_interval`` is given."""

ENV_DELIVERY: Final = "MLBENCH_METRICS_DELIVERY"
"""How records are delivered when no ``delivery`` is given: ``thread`` or ``process``."""

ENV_AGENT_LINGER: Final = "MLBENCH_METRICS_AGENT_LINGER"
"""Seconds a delivery agent keeps trying without progress after its training process is gone (600)."""

DELIVERY_MODES: Final = ("thread", "process")
"""``thread``: a dispatcher thread in the training process; ``process``: the training
process only writes the durable log, and an agent process delivers it."""


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
