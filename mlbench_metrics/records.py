"""Metric records, batches and the dashboard's date formats.

Shared by the client (``api``, ``_dispatch``, ``spool``) and the embedded server, so
both sides agree on one definition of a metric and of every date format on the wire.
Dates travel inside this library as integers: microseconds since the Unix epoch, UTC.

This module starts no threads and does no I/O.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Final, Iterable, Iterator, Mapping, Sequence, Union

__all__ = [
    "DATE_US_MAX",
    "DATE_US_MIN",
    "NAME_MAX",
    "SERVER_VALUE_MAX",
    "VALUE_MAX",
    "Metric",
    "MetricBatch",
    "format_dashboard_date",
    "format_iso_date",
    "format_str_datetime",
    "format_zip_date",
    "parse_date",
    "to_us",
    "us_to_datetime",
    "value_to_str",
]

NAME_MAX: Final = 50
"""Longest metric name the dashboard stores (``KubeMetric.name``, ``max_length=50``)."""

VALUE_MAX: Final = 100
"""Longest string value the dashboard's serializer accepts (``value`` ``max_length=100``)."""

SERVER_VALUE_MAX: Final = 255
"""Longest value the dashboard's database column holds; our server refuses longer ones."""

_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

DATE_US_MIN: Final = -62_135_596_800_000_000
"""The earliest date a datetime can hold (0001-01-01), in microseconds since the epoch."""

DATE_US_MAX: Final = 253_402_300_799_999_999
"""The latest date a datetime can hold (9999-12-31T23:59:59.999999), in microseconds."""
_US_PER_DAY: Final = 86_400_000_000

# The grammar of Django's ``parse_datetime`` (what the dashboard accepts): ``T`` or a
# space, 1-6 fraction digits (more are ignored), optional ``Z`` or ``+HH[[:]MM]``.
_DATETIME_RE: Final = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})"
    r"(?:[T ](?P<hour>\d{1,2}):(?P<minute>\d{1,2})"
    r"(?::(?P<second>\d{1,2})(?:[.,](?P<fraction>\d{1,6})\d{0,6})?)?"
    r"\s*(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?)?$"
)


def to_us(value: _dt.datetime) -> int:
    """Microseconds since the epoch for ``value``; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def us_to_datetime(us: int) -> _dt.datetime:
    """The aware UTC datetime for ``us`` microseconds since the epoch."""
    return _EPOCH + _dt.timedelta(microseconds=us)


def parse_date(text: str) -> int:
    """Parse a date as the dashboard does and return microseconds since the epoch.

    Accepts what the upstream client sends (``str(datetime)``: a space, no zone, no
    fraction when it is zero), what the dashboard emits (``...T...ffffffZ``), ISO 8601
    with an offset, and a bare ``YYYY-MM-DD`` (midnight UTC). Naive times are UTC.

    Raises:
        ValueError: ``text`` is not such a date, or names an impossible one.
    """
    if not isinstance(text, str):
        raise ValueError(f"a date must be a string, not {type(text).__name__}")
    match = _DATETIME_RE.match(text.strip())
    if match is None:
        raise ValueError(f"unparseable date {text!r}; expected e.g. 2021-01-02T03:04:05.123456Z")
    g = match.groupdict()
    fraction = g["fraction"] or "0"
    try:
        moment = _dt.datetime(
            int(g["year"]),
            int(g["month"]),
            int(g["day"]),
            int(g["hour"] or 0),
            int(g["minute"] or 0),
            int(g["second"] or 0),
            int(fraction.ljust(6, "0")),
            tzinfo=_dt.timezone.utc,
        )
    except ValueError as exc:
        raise ValueError(f"impossible date {text!r}: {exc}") from None
    us = to_us(moment)
    tz = g["tz"]
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset_min = int(digits[:2]) * 60 + int(digits[2:4] or 0)
        us -= sign * offset_min * 60_000_000
    return us


@functools.lru_cache(maxsize=4096)
def _day(days: int) -> str:
    return (_EPOCH + _dt.timedelta(days=days)).strftime("%Y-%m-%d")


def _split(us: int) -> tuple[str, int, int, int, int]:
    days, rem = divmod(us, _US_PER_DAY)
    secs, micro = divmod(rem, 1_000_000)
    hour, secs = divmod(secs, 3600)
    minute, sec = divmod(secs, 60)
    return _day(days), hour, minute, sec, micro


def format_dashboard_date(us: int) -> str:
    """The metric serializer's format: ``%Y-%m-%dT%H:%M:%S.%fZ``, always 6 digits."""
    day, h, m, s, micro = _split(us)
    return f"{day}T{h:02d}:{m:02d}:{s:02d}.{micro:06d}Z"


def format_iso_date(us: int) -> str:
    """DRF's default: ISO 8601 with ``Z``, the fraction left out when it is zero."""
    day, h, m, s, micro = _split(us)
    if micro:
        return f"{day}T{h:02d}:{m:02d}:{s:02d}.{micro:06d}Z"
    return f"{day}T{h:02d}:{m:02d}:{s:02d}Z"


def format_zip_date(us: int) -> str:
    """Django's JSON encoder (the zip download): milliseconds, truncated, with ``Z``."""
    day, h, m, s, micro = _split(us)
    if micro:
        return f"{day}T{h:02d}:{m:02d}:{s:02d}.{micro // 1000:03d}Z"
    return f"{day}T{h:02d}:{m:02d}:{s:02d}Z"


def format_str_datetime(us: int) -> str:
    """What ``str(datetime.utcnow())`` gives, as the upstream client sends dates."""
    day, h, m, s, micro = _split(us)
    if micro:
        return f"{day} {h:02d}:{m:02d}:{s:02d}.{micro:06d}"
    return f"{day} {h:02d}:{m:02d}:{s:02d}"


def value_to_str(value: object) -> str:
    """How a value travels: ``str()`` as upstream does; NaN and infinities kept.

    ``str(float("nan"))`` is ``"nan"`` and ``str(float("inf"))`` is ``"inf"``, which is
    what the dashboard stores verbatim, so a diverging loss stays visible.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return str(value)


DateLike = Union[_dt.datetime, int, str, None]


@dataclass(frozen=True)
class Metric:
    """One metric point, as the dashboard stores it.

    Example::

        Metric("loss @ 0", 0.25, date=datetime.datetime.utcnow(), metadata='{"rank": 0}')

    Args:
        name: the metric name (the dashboard keeps at most 50 characters).
        value: the value; sent as ``str(value)``.
        date: a datetime (naive is UTC), microseconds since the epoch, a date string,
            or None for now.
        metadata: free text; a mapping is sent as JSON text.
        cumulative: whether the value is a running total.
    """

    name: str
    value: Any
    date: DateLike = None
    metadata: Any = ""
    cumulative: bool = False


def _date_us(date: DateLike, now_us: int) -> int:
    if date is None:
        return now_us
    if isinstance(date, bool):
        raise TypeError("a date cannot be a bool")
    if isinstance(date, int):
        return date
    if isinstance(date, _dt.datetime):
        return to_us(date)
    if isinstance(date, str):
        return parse_date(date)
    raise TypeError(f"a date must be a datetime, int microseconds or str, not {type(date).__name__}")


def metadata_to_str(metadata: Any) -> str:
    """Metadata as text: strings as they are, mappings and lists as JSON, None as ``""``."""
    if metadata is None:
        return ""
    if isinstance(metadata, str):
        return metadata
    return json.dumps(metadata)


@dataclass
class MetricBatch:
    """Metrics for one run in columns, the shape every delivery path works on.

    The dispatcher fills the columns directly (no per-metric object); ``from_metrics``
    builds one from :class:`Metric` objects or mappings. ``batch_id`` makes re-sends
    idempotent on servers with the batch endpoint.
    """

    names: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    dates_us: list[int] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    cumulative: list[bool] = field(default_factory=list)
    batch_id: str | None = None

    def __len__(self) -> int:
        return len(self.names)

    def append(self, name: str, value: str, date_us: int, metadata: str = "", cumulative: bool = False) -> None:
        """Add one metric whose fields are already in wire form."""
        self.names.append(name)
        self.values.append(value)
        self.dates_us.append(date_us)
        self.metadata.append(metadata)
        self.cumulative.append(cumulative)

    def rows(self) -> Iterator[tuple[str, str, int, str, bool]]:
        """``(name, value, date_us, metadata, cumulative)`` for each metric, in order."""
        return zip(self.names, self.values, self.dates_us, self.metadata, self.cumulative)

    def subset(self, indices: Iterable[int]) -> MetricBatch:
        """A new batch (with no id) of the metrics at ``indices``."""
        out = MetricBatch()
        for i in indices:
            out.append(self.names[i], self.values[i], self.dates_us[i], self.metadata[i], self.cumulative[i])
        return out

    def to_columns(self) -> dict[str, Any]:
        """The columnar JSON body fragment of the batch endpoint."""
        return {
            "name": self.names,
            "value": self.values,
            "date_us": self.dates_us,
            "metadata": self.metadata,
            "cumulative": self.cumulative,
        }

    @classmethod
    def from_metrics(
        cls, metrics: Iterable[Metric | Mapping[str, Any]], now_us: int, batch_id: str | None = None
    ) -> MetricBatch:
        """Build a batch from :class:`Metric` objects or mappings with the same keys.

        Raises:
            TypeError, ValueError: a metric lacks a name or value or has a bad date.
        """
        batch = cls(batch_id=batch_id)
        for i, item in enumerate(metrics):
            if isinstance(item, Metric):
                m = item
            elif isinstance(item, Mapping):
                try:
                    m = Metric(**item)
                except TypeError as exc:
                    raise TypeError(f"metric {i}: {exc}") from None
            else:
                raise TypeError(f"metric {i}: expected a Metric or a mapping, not {type(item).__name__}")
            if not isinstance(m.name, str) or not m.name:
                raise ValueError(f"metric {i}: name must be a non-empty string")
            batch.append(
                m.name,
                value_to_str(m.value),
                _date_us(m.date, now_us),
                metadata_to_str(m.metadata),
                bool(m.cumulative),
            )
        return batch


def as_batch(metrics: MetricBatch | Sequence[Metric | Mapping[str, Any]], now_us: int) -> MetricBatch:
    """``metrics`` as a :class:`MetricBatch` (returned as is when it already is one)."""
    if isinstance(metrics, MetricBatch):
        return metrics
    return MetricBatch.from_metrics(metrics, now_us)
