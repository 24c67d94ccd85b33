"""What the upstream client sends, checked: the text of each argument, and the warnings.

``mlbench_core.api.ApiClient`` sends whatever it is given and lets the dashboard answer;
code written for it (and its test suites) expects a Future back. So each argument is
turned into the text upstream would send; a check that refuses it records the problem,
with what the dashboard will do with it (PROTOCOL.md), and :func:`refuse_or_warn` then
raises (``strict=True``) or warns with a :class:`~.errors.DashboardWarning`. No threads,
no I/O.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
import warnings
from typing import Any, Callable, Final

from ..errors import DashboardWarning
from ..records import (
    check_flag,
    check_value,
    format_dashboard_date,
    format_str_datetime,
    parse_date,
    to_us,
    value_to_str,
)

__all__ = [
    "BAD_COUNT",
    "BEYOND_SCHEMA",
    "REFUSED",
    "RUN_NAME_RULE",
    "RUN_REFUSED",
    "count_text",
    "cumulative_text",
    "date_text",
    "non_negative_int",
    "now_us",
    "refuse_or_warn",
    "run_name_text",
    "sent",
    "since_text",
    "valid_run_name",
    "value_text",
]

_RUN_NAME_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

# What the dashboard does with what upstream sends (PROTOCOL.md), for the warnings.
BEYOND_SCHEMA: Final = (
    "the embedded server answers 400; the dashboard stores it whole on SQLite, fails (500) on PostgreSQL"
)
REFUSED: Final = "the dashboard answers 500, the embedded server 400"
BAD_COUNT: Final = "the dashboard answers 500 or ignores it, the embedded server answers 400"
RUN_REFUSED: Final = "the dashboard answers 304 'Invalid run name' and creates no run, the embedded server answers 400"


def now_us() -> int:
    """Now, in microseconds since the epoch."""
    return time.time_ns() // 1000


def refuse_or_warn(strict: bool, what: str, problems: list[str], *, depth: int = 1) -> None:
    """Raise (``strict``) or warn about what the dashboard will refuse or alter in a call.

    Args:
        strict: raise ``ValueError`` instead of warning.
        what: the public method.
        problems: what is wrong, each with what the dashboard will do; none: nothing happens.
        depth: calls between the caller's line and the public method's call of this
            function (1: called by the public method itself), so the warning points at
            the caller's line.

    Raises:
        ValueError: ``strict`` and there are problems.
    """
    if not problems:
        return
    text = f"{what}: " + "; ".join(problems)
    if strict:
        raise ValueError(text)
    warnings.warn(
        f"{text}. Sent as mlbench_core's ApiClient sends it (ApiClient(strict=True) refuses it instead)",
        DashboardWarning,
        stacklevel=2 + depth,
    )


def sent(check: Callable[[Any], str], value: Any, problems: list[str], consequence: str) -> str:
    """``check(value)``: the text to send; when the check refuses the value, the problem
    (with what the dashboard will do) goes to ``problems`` and ``str(value)`` is sent, as
    upstream sends it."""
    try:
        return check(value)
    except (TypeError, ValueError) as exc:
        problems.append(f"{exc}: {consequence}")
        return str(value)


def run_name_text(name: Any) -> str:
    """A run name the dashboard takes: a Kubernetes name, at most 100 characters."""
    if not isinstance(name, str) or len(name) > 100 or not _RUN_NAME_RE.fullmatch(name.lower()):
        raise ValueError(f"invalid run name {name!r} (use {RUN_NAME_RULE})")
    return name


RUN_NAME_RULE: Final = "letters, digits and '-', starting and ending with a letter or digit, at most 100 characters"


def valid_run_name(name: str) -> str:
    """``name`` made a run name the dashboard takes: each run of other characters becomes
    one '-', and the ends are trimmed (``"toy-lr0.1"`` -> ``"toy-lr0-1"``); ``"run"`` if
    nothing is left."""
    made = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:100].rstrip("-")
    return made or "run"


def cumulative_text(cumulative: Any) -> str:
    """``cumulative`` as the dashboard parses it: ``True`` or ``False``.

    Text is read by the one validator, so ``"False"`` stays false (``bool("False")`` is
    True); anything else becomes ``str(bool(...))``, as upstream sends it.
    """
    return str(check_flag(cumulative) if isinstance(cumulative, str) else bool(cumulative))


def value_text(value: Any) -> str:
    """The value as upstream sends it (``str()``, NaN and infinities kept), checked."""
    return str(check_value(value_to_str(value)))


def count_text(what: str) -> Callable[[Any], str]:
    """A check that a query parameter is a non-negative integer, giving its text."""
    return lambda value: str(non_negative_int(value, what))


def non_negative_int(value: Any, name: str) -> int:
    """``value`` when it is an integer of at least 0.

    Raises:
        ValueError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


def date_text(date: _dt.datetime | str | int | None) -> str:
    """The date as upstream sends it (``str(datetime)``), checked to be parseable."""
    if date is None:
        return format_str_datetime(now_us())
    if isinstance(date, _dt.datetime):
        return str(date)
    if isinstance(date, int) and not isinstance(date, bool):
        return format_str_datetime(date)
    if isinstance(date, str):
        parse_date(date)  # raises ValueError with a clear message
        return date
    raise TypeError(f"date must be a datetime, a date string or microseconds, not {type(date).__name__}")


def since_text(since: _dt.datetime | str) -> str:
    """``since`` in the one format the dashboard parses: ``%Y-%m-%dT%H:%M:%S.%fZ`` (UTC)."""
    if isinstance(since, _dt.datetime):
        return format_dashboard_date(to_us(since))
    if isinstance(since, str):
        return format_dashboard_date(parse_date(since))
    raise TypeError(f"since must be a datetime or a date string, not {type(since).__name__}")
