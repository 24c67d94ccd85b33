"""A run's configuration (hyperparameters): checked where it is given, stored with the run.

``MetricsLogger(config={...})`` and ``init(config=...)`` call :func:`check_config` at once
(a bad config is a :class:`~mlbench_metrics.errors.ConfigError` in the training script,
not a lost record later) and :func:`send_config` once the run is known. The embedded
server stores it (the ``run_config`` extension); the run page and ``runs show`` display it.

The MLBench dashboard has no place for a run's configuration. Against it nothing is
stored and one warning says so: a metric carrying the config would show up as a chart
of one meaningless point, and its metadata could not be read back per run anyway. Log
the hyperparameters you need there as metrics (``log("lr", 0.1)``).

No threads are started here: the request runs on the client's pool and a callback logs
its outcome.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from typing import Any, Final, Mapping

import requests

from ..client.api import ApiClient
from ..errors import ConfigError
from ..records import text_problem

__all__ = ["MAX_CONFIG_BYTES", "check_config", "send_config"]

MAX_CONFIG_BYTES: Final = 64 * 1024
"""The largest configuration (as compact JSON) the server stores."""

_log = logging.getLogger(__name__)


def check_config(config: Any) -> dict[str, Any]:
    """A copy of ``config`` if it can be stored: a mapping with string keys, JSON, at most
    64 KiB, its keys and strings valid text (no lone surrogate: ``records.text_problem``).

    Raises:
        ConfigError: it is not a mapping, holds something JSON cannot (objects, NaN), is
            nested too deeply, is too large, or a key or string holds a lone surrogate
            (the message names it).
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a mapping (a dict of hyperparameters), not {type(config).__name__}")
    try:
        text = json.dumps(dict(config), allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config must be JSON-serialisable (strings, finite numbers, lists, dicts): {exc}") from None
    except RecursionError:  # not a ValueError: a traceback in the training script otherwise
        raise ConfigError("config is nested too deeply to be stored as JSON") from None
    size = len(text.encode())
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config is {size:,} bytes as JSON; the limit is {MAX_CONFIG_BYTES:,}")
    result: dict[str, Any] = json.loads(text)
    problem = _text_problem(result)
    if problem:
        raise ConfigError(problem)
    return result


def _text_problem(config: dict[str, Any]) -> str | None:
    """What the shared text rule (``records.text_problem``) finds wrong in a key or a
    string of ``config`` (already plain JSON), naming where; None when nothing.

    ``json.dumps`` escapes a lone surrogate as ``\\udcff`` without complaint, so without
    this the server would refuse the whole configuration later, far from the script.
    """
    todo: list[tuple[str, Any]] = [("config", config)]
    while todo:  # a loop, not recursion: the nesting is as deep as json allowed
        where, value = todo.pop()
        if isinstance(value, str):
            problem = text_problem(value, f"the value at {where}")
            if problem:
                return problem
        elif isinstance(value, dict):
            for key, item in value.items():
                at = f"{where}[{key!r}]"
                problem = text_problem(key, f"the key {at}")
                if problem:
                    return problem
                todo.append((at, item))
        elif isinstance(value, list):
            todo.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


def send_config(client: ApiClient, run_id: int, config: Mapping[str, Any]) -> Future[requests.Response]:
    """Store ``config`` with run ``run_id`` through ``client``, without waiting.

    The outcome is logged: nothing when stored, one warning when the server cannot store
    it (the dashboard) or refuses it.

    Returns:
        The request's future, for callers that want to wait.
    """
    future = client.set_run_config(run_id, config)

    def done(f: Future[requests.Response]) -> None:
        try:
            response = f.result()
        except Exception as exc:  # the client's errors; a failed config never stops training
            _log.warning("could not store the configuration of run %s: %s", run_id, exc)
            return
        if response.status_code in (404, 405, 501) and "run_config" not in _extensions(client):
            _log.warning(
                "the server at %s keeps no run configuration (the MLBench dashboard has none): "
                "config of run %s not stored",
                client.endpoint,
                run_id,
            )
        elif response.status_code >= 400:
            _log.warning(
                "the server refused the configuration of run %s: %s %s",
                run_id,
                response.status_code,
                response.text[:200],
            )

    future.add_done_callback(done)
    return future


def _extensions(client: ApiClient) -> frozenset[str]:
    try:
        return client.server_extensions()
    except Exception:  # cannot tell: say the server keeps none, which is what the warning says
        return frozenset()
