"""The dashboard's date formats, and dates as integers.

Dates travel inside this library as integers: microseconds since the Unix epoch, UTC.
Parsing follows Django's ``parse_datetime`` (what the dashboard accepts); each of the
dashboard's three output formats has one formatter here. No threads, no I/O.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from typing import Final

__all__ = [
    "DATE_US_MAX",
    "DATE_US_MIN",
    "format_dashboard_date",
    "format_iso_date",
    "format_str_datetime",
    "format_zip_date",
    "parse_date",
    "to_us",
    "us_to_datetime",
]

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
        ValueError: ``text`` is not such a date, names an impossible one, or leaves
            the years 1 to 9999 once its offset is applied.
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
        if not DATE_US_MIN <= us <= DATE_US_MAX:
            raise ValueError(f"date {text!r} is outside the years 1 to 9999 in UTC")
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
