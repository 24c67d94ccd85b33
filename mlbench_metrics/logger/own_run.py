"""The run a logger creates for itself (``new_run=``): made at start, marked at close.

Where the server supports run states (the embedded one does; the dashboard ends runs
itself and answers 405), ``close()`` marks the run finished, or failed. No threads.
"""

from __future__ import annotations

import logging
import os
import sys

from ..client.api import ApiClient
from ..client.dropin import RUN_NAME_RULE, valid_run_name
from ..errors import ConfigError, TransportError, describe_transport_error

__all__ = ["check_run", "create_own_run", "mark_own_run"]

_log = logging.getLogger("mlbench_metrics")


def create_own_run(client: ApiClient, name: str) -> int:
    """Create the run a ``new_run=`` logger logs to: a custom run of this program.

    A name the dashboard would refuse is made valid (``"toy-lr0.1"`` -> ``"toy-lr0-1"``),
    and that is said in one line.

    Raises:
        ConfigError: the server refuses the run.
        TransportError: no server answers (one line, no chain of ``requests`` errors).
    """
    from ..runs import Run  # runs imports api only; imported here to keep logger's imports light

    valid = valid_run_name(name)
    if valid != name:
        _log.warning(
            "mlbench-metrics: new_run %r is not a valid run name (%s): creating %r", name, RUN_NAME_RULE, valid
        )
    command = " ".join([os.path.basename(sys.executable or "python"), *sys.argv])
    try:
        run = Run.create(
            valid, 1, custom_image_name="local", custom_image_command=command, custom_backend="local", client=client
        )
    except ValueError as exc:
        raise ConfigError(f"new_run: {exc}") from None
    except TransportError as exc:
        raise type(exc)(
            f"new_run: cannot create run {valid!r}: {describe_transport_error(exc)}",
            sent=exc.sent,
            method=exc.method,
            url=exc.url,
        ) from None
    return run.id


def check_run(client: ApiClient, run_id: int) -> None:
    """Refuse a run the server says does not exist; a server that does not answer at
    once (down, slow) is not waited for: the spool keeps the records until it does.

    Raises:
        ConfigError: the server answered that there is no such run.
    """
    if client.run_exists(run_id) is False:
        where = client.endpoint.removesuffix("/api/")
        raise ConfigError(
            f"run {run_id} does not exist on {where}: create it first (mlbench-metrics runs create NAME), "
            "or pass new_run=NAME to create one"
        )


def mark_own_run(client: ApiClient, run_id: int, state: str, timeout: float) -> None:
    """Mark the run ``state`` within ``timeout``; never raises (closing goes on)."""
    if timeout <= 0:
        _log.warning("mlbench-metrics: no time was left to mark run %s %s", run_id, state)
        return
    try:
        answer = client.set_run_state(run_id, state).result(timeout)
    except Exception as exc:  # closing must not raise: say it and go on
        _log.warning("mlbench-metrics: could not mark run %s %s: %s", run_id, state, exc)
        return
    if answer.status_code == 405:
        _log.info("mlbench-metrics: the server cannot mark runs %s (the dashboard ends runs itself)", state)
    elif answer.status_code >= 400:
        _log.warning("mlbench-metrics: marking run %s %s answered %s", run_id, state, answer.status_code)
