"""What the logger stamps on every record: its final name, rank, epoch, step and metadata.

:class:`Stamping` is the part of :class:`~mlbench_metrics.MetricsLogger` that turns a
name and the logger's state into what a record carries: names checked once and
remembered with their rank suffix (``"loss @ 3"``), the :class:`Context` (rank, epoch,
step) shared by the records until the epoch or the step changes, and one-off metadata.
The hot path reads ``_names`` and ``_ctx`` directly; this class keeps them right. No
threads.
"""

from __future__ import annotations

import json
from typing import Any, Final, Mapping

from ..records import Context, check_name, check_step, coerce_value
from ..records.checks import Value
from .settings import LoggerConfig

__all__ = ["Stamping", "checked_value"]

_RESERVED_METADATA: Final = frozenset({"rank", "epoch", "step"})


class Stamping:
    """The names and contexts of a logger's records, and the settings they come from.

    Args:
        settings: the logger's settings (the rank is fixed by them).
    """

    def __init__(self, settings: LoggerConfig) -> None:
        self.settings = settings
        self._names: dict[object, str] = {}
        self._epoch = 0
        self._step: int | None = None
        self._last_step: int | None = None  # the newest step given: timers and totals carry it
        world_size = settings.world_size
        self._placed = "" if world_size is None else f', "world_size": {world_size}'
        self._rebuild_contexts()

    @property
    def rank(self) -> int | None:
        """This process's rank (None: names are kept as given)."""
        return self.settings.rank

    @property
    def world_size(self) -> int | None:
        """The number of processes in the job, where it was found (see ``rank``)."""
        return self.settings.world_size

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
        """The default step for records logged without ``step=`` (None: no step).

        Timers and :meth:`increment` record the newest step given, here or to ``log(step=)``,
        so that their charts share the x axis of the metrics logged with steps."""
        return self._step

    @step.setter
    def step(self, value: int | None) -> None:
        self._step = self._last_step = None if value is None else check_step(value)
        self._rebuild_contexts()

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
        if self._placed and "world_size" in metadata:
            raise ValueError("metadata key 'world_size' is set by the logger (the job's world size was found)")
        return Context(self.rank, self._epoch, self._step, False, self._placed + ", " + text[1:-1])

    def _rebuild_contexts(self) -> None:
        self._ctx = Context(self.rank, self._epoch, self._step, False, self._placed)
        self._cum_ctx = Context(self.rank, self._epoch, self._step, True, self._placed)


def checked_value(name: str, value: object) -> Value:
    """A value that is not exactly an int or a float: convert it, or refuse it clearly."""
    try:
        return coerce_value(value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"metric {name!r}: {exc}") from None
