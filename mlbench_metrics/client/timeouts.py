"""The client's connect and read timeouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..errors import ConfigError

__all__ = ["TimeoutLike", "Timeouts"]

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
