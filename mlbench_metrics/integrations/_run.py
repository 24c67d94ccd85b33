"""What every integration does with its run: open it late, log dicts, keep its config, end it.

A framework hands a tracker dictionaries of numbers (often tensors), its hyperparameters
as objects, and a signal that training ended. :class:`RunLink` turns those into calls on
the public :class:`~mlbench_metrics.MetricsLogger` API, so the integrations stay thin and
the logger's rules (names, limits, run states through ``close(failed=...)``) apply
unchanged. No framework is imported here; no threads are started beyond the logger's.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import numbers
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any, Mapping

from ..errors import ConfigError
from ..logger import MetricsLogger
from ..logger.run_config import check_config, send_config

__all__ = ["RunLink", "default_run_name", "jsonable", "scalar"]

_log = logging.getLogger("mlbench_metrics.integrations")

_CONFIG_WAIT = 10.0
"""Seconds closing waits for configurations still on their way to the server."""


def default_run_name(framework: str) -> str:
    """``<framework>-YYYYMMDD-HHMMSS``: a run name the server accepts (lower case, dashes)."""
    return f"{framework}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def scalar(value: Any) -> float | int | str | None:
    """A value as the logger takes it: a number, a short text, or None (not a scalar).

    Tensors and numpy scalars of one element give their ``item()``; booleans become 0/1.
    """
    kind = type(value)
    if kind is float or kind is int:
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", 0) == 0:
        try:
            return scalar(item())
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _text(text: str) -> str:
    """``text`` as valid Unicode: a lone surrogate (a file name's bytes that are not UTF-8,
    through ``os.fsdecode``) as a backslash escape, since the server refuses the whole config
    for one (``/data/caf\udce9`` -> ``/data/caf\\xe9``)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no bytes made
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can hold it: containers kept, non-finite floats and objects as text
    (and text made valid Unicode: see :func:`_text`)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth > 20:
        return _text(str(value))
    if isinstance(value, Mapping):
        return {_text(str(k)): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1) for v in value]
    number = scalar(value)
    if number is not None:
        return jsonable(number, depth + 1)
    return _text(str(value))


class RunLink:
    """One run as an integration sees it: a logger opened on first use, a config, an end.

    Args:
        run_id: an existing run to log to (else ``MLBENCH_METRICS_RUN_ID``).
        new_run: the name of a run to create when no run is given.
        logger: a logger the program made itself; it is flushed at the end, never closed.
        **logger_kwargs: more :class:`~mlbench_metrics.MetricsLogger` arguments (``url``,
            ``client``, ``rank``, ``config``, ...).

    Raises:
        ConfigError: ``config`` cannot be stored (see ``MetricsLogger``).
    """

    def __init__(
        self,
        run_id: int | str | None,
        new_run: str | None,
        logger: MetricsLogger | None = None,
        **logger_kwargs: Any,
    ) -> None:
        self._run_id = run_id
        self._new_run = None if run_id is not None else new_run
        self._kwargs = logger_kwargs
        config = logger_kwargs.pop("config", None)
        self._config: dict[str, Any] = {} if config is None else check_config(config)
        self._sent: Future[Any] | None = None  # the newest configuration sent
        self._logger = logger
        self._own = logger is None
        self._warned: set[str] = set()

    @property
    def run_id(self) -> int | None:
        """The run's id, once known (after the logger opened, or when given)."""
        if self._logger is not None:
            return self._logger.run_id
        try:
            return None if self._run_id is None else int(self._run_id)
        except ValueError:  # the logger says what is wrong with it when it opens
            return None

    def logger(self) -> MetricsLogger:
        """The logger, opened now if needed; after the end, a new one for the same run."""
        found = self._logger
        if found is not None and not found.closed:
            return found
        if found is not None:  # logging after the end (a test after fit): same run, not owned
            found = MetricsLogger(found.run_id, **self._kwargs)
            self._own = True
            self._logger = found
        else:
            self._logger = found = MetricsLogger(self._run_id, new_run=self._new_run, **self._kwargs)
            if self._config:
                self._send_config(found)
        return found

    def update_config(self, params: Mapping[str, Any]) -> None:
        """Add ``params`` to the run's configuration and store the whole of it.

        A configuration the server cannot take (too large) is warned about, never raised:
        training goes on.
        """
        merged = {**self._config, **jsonable(dict(params))}
        try:
            check_config(merged)
        except ConfigError as exc:
            _log.warning("mlbench-metrics: the run's configuration is not stored: %s", exc)
            return
        self._config = merged
        if self._logger is None:  # sent when the logger opens
            return
        self._send_config(self.logger())

    def _send_config(self, logger: MetricsLogger) -> None:
        """Send the whole configuration, after the one sent before it: each replaces the
        last, so two on the client's pool at once could land in the wrong order."""
        previous = self._sent
        if previous is not None and not previous.done():
            wait_futures([previous], timeout=_CONFIG_WAIT)  # once or twice a run, at its start
        self._sent = send_config(logger.client, logger.run_id, self._config)

    def log(self, values: Mapping[str, Any], step: int | None = None, epoch: float | None = None) -> None:
        """Record each scalar of ``values`` at ``step``; others are skipped (warned once).

        A value the logger refuses (a name too long, say) is skipped with one warning per
        name; the others are recorded: a tracker must not stop training. Called on every
        step a framework logs, so it does little: one ``log()`` per value.
        """
        logger = self._logger
        if logger is None or logger.closed:
            logger = self.logger()
        if epoch is not None and 0 <= epoch < math.inf:
            whole = int(epoch)
            if whole != logger.epoch:
                logger.epoch = whole
        log = logger.log
        for name, value in values.items():
            kind = type(value)
            if kind is not float and kind is not int:
                value = scalar(value)
                if value is None:
                    self._warn(name, f"{type(values[name]).__name__} is not a scalar")
                    continue
            try:
                log(name, value, step)
            except (TypeError, ValueError) as exc:
                self._warn(name, str(exc))

    def close(self, failed: bool = False) -> None:
        """End the run: a logger this link opened is closed (the run marked finished or
        failed, where it created the run); one given to it is flushed."""
        logger = self._logger
        if logger is None or logger.closed:
            return
        if self._sent is not None:
            wait_futures([self._sent], timeout=_CONFIG_WAIT)
            self._sent = None
        if self._own:
            logger.close(failed=failed)
        else:
            logger.flush(logger.shutdown_timeout)

    def _warn(self, name: str, why: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            _log.warning("mlbench-metrics: %r is not recorded: %s", name, why)
