"""The one validator: what a metric name, value, flag and step may be.

The logger, :class:`~mlbench_metrics.ApiClient` and the embedded server all ask here, so
one metric is judged the same way everywhere. Each check comes in two forms:
``*_problem()`` returns what is wrong as text (or None), for callers that warn and send
anyway, as code written for the upstream client expects; ``check_*()`` raises it.
Messages name the limit, so a user knows what to change. No threads, no I/O.
"""

from __future__ import annotations

import numbers
from typing import Final, Union

__all__ = [
    "NAME_MAX",
    "SERVER_VALUE_MAX",
    "VALUE_MAX",
    "Value",
    "check_flag",
    "check_name",
    "check_number",
    "check_step",
    "check_value",
    "coerce_value",
    "flag_problem",
    "name_problem",
    "parse_flag",
    "text_problem",
    "value_problem",
]

NAME_MAX: Final = 50
"""Longest metric name the dashboard stores (``KubeMetric.name``, ``max_length=50``)."""

VALUE_MAX: Final = 100
"""Longest string value the dashboard's serializer accepts (``value`` ``max_length=100``)."""

SERVER_VALUE_MAX: Final = 255
"""Longest value the dashboard's database column holds; our server refuses longer ones."""

Value = Union[int, float, str]
"""A metric value as it travels: a number (sent as ``str()`` of it) or text."""

_TRUE: Final = frozenset({"true", "t", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "f", "0", "no", "off"})


def text_problem(text: str, what: str = "a text") -> str | None:
    """What is wrong with ``text`` as stored text, or None: a lone surrogate is.

    A lone surrogate (U+D800 to U+DFFF outside a pair) is not a character: it has no UTF-8
    form, so no answer holding it could be written. Python makes one from bytes that are
    not UTF-8, e.g. ``os.fsdecode(b"ckpt-\\xff.pt")`` gives ``"ckpt-\\udcff.pt"``. Such
    text is refused where it enters (``log()``, the client, the server's bodies) rather
    than stored and escaped on the way out, so what is stored is always what reads return.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        return (
            f"{what} {text[:60]!r} holds a lone surrogate (U+{ord(char):04X} at character {exc.start}), "
            "which is not valid Unicode (it comes from bytes that are not UTF-8, such as a file name "
            "through os.fsdecode); clean it first, e.g. "
            "text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')"
        )
    return None


def name_problem(name: object, limit: int = NAME_MAX) -> str | None:
    """What is wrong with ``name`` as a metric name, or None when it is fine."""
    if not isinstance(name, str) or not name.strip():
        return f"a metric name must be a non-empty string, got {name!r}"
    if len(name) > limit:
        return f"metric name {name!r} is {len(name)} characters long; the limit is {limit}"
    return text_problem(name, "metric name")


def check_name(name: object, limit: int = NAME_MAX) -> str:
    """``name`` when it is a valid metric name.

    Raises:
        TypeError: it is not a string.
        ValueError: it is empty, longer than ``limit``, or holds a lone surrogate.
    """
    problem = name_problem(name, limit)
    if problem is not None:
        raise (TypeError if not isinstance(name, str) else ValueError)(problem)
    assert isinstance(name, str)
    return name


def value_problem(value: object, limit: int = SERVER_VALUE_MAX) -> str | None:
    """What is wrong with ``value`` as a metric value on the wire, or None.

    A value is a number or text; booleans, None and containers are not (the dashboard
    would store their ``str()``). Text longer than ``limit`` is refused; so is a number
    whose ``str()`` is (an integer of hundreds of digits), and text holding a lone
    surrogate (see :func:`text_problem`).
    """
    kind = type(value)
    if kind is float:
        return None
    if kind is bool or value is None or not isinstance(value, (str, int, float)):
        return f"a metric value must be a number or a string, not {value!r}"[:200]
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return f"a metric value is {len(text)} characters long; the limit is {limit}"
    return text_problem(text, "metric value")


def check_value(value: object, limit: int = SERVER_VALUE_MAX) -> Value:
    """``value`` when it is a valid metric value (see :func:`value_problem`).

    Raises:
        TypeError: it is not a number or a string.
        ValueError: it is too long, or holds a lone surrogate.
    """
    problem = value_problem(value, limit)
    if problem is not None:
        raise (ValueError if isinstance(value, (str, int)) and type(value) is not bool else TypeError)(problem)
    assert isinstance(value, (int, float, str))
    return value


def coerce_value(value: object, limit: int = VALUE_MAX) -> Value:
    """A value from a training loop as an int, a float or a string, or a clear error.

    Integers and reals from other libraries become ``int``/``float``; a 0-d tensor or
    array (anything with ``.item()``) gives its item; ``Decimal`` and the like go through
    ``float()``. NaN and infinities are kept: a diverging loss must be visible.

    Raises:
        TypeError: it is a boolean, None, or not a number or a string.
        ValueError: it is a string longer than ``limit``, or holding a lone surrogate.
    """
    if isinstance(value, bool) or value is None:
        raise TypeError(f"a value must be a number or a string, not {value!r}")
    if isinstance(value, str):
        return check_value(value, limit)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return coerce_value(item(), limit)
        except (TypeError, ValueError):
            pass
    if hasattr(type(value), "__float__") and not isinstance(value, complex):
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, ArithmeticError):
            pass
    raise TypeError(f"a value must be an int, a float or a string, not {type(value).__name__}")


def parse_flag(value: object) -> bool | None:
    """A boolean given as a bool, 0/1, or text (``True``/``false``/``t``/``0``/``yes``...);
    None when it is none of these. ``"False"`` is false (``bool("False")`` is not)."""
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def flag_problem(value: object, what: str = "cumulative") -> str | None:
    """What is wrong with ``value`` as a boolean flag, or None."""
    if parse_flag(value) is None:
        return f"{what} {str(value)[:50]!r} is not a boolean (True/False)"
    return None


def check_flag(value: object, what: str = "cumulative") -> bool:
    """``value`` as a bool (see :func:`parse_flag`).

    Raises:
        ValueError: it is not a boolean in any of the accepted spellings.
    """
    flag = parse_flag(value)
    if flag is None:
        raise ValueError(flag_problem(value, what))
    return flag


def check_step(step: object) -> int:
    """A step as an ``int``.

    Raises:
        TypeError: it is not an integer (a bool is not one).
    """
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"step must be an integer, not {type(step).__name__}")
    return int(step)


def check_number(value: object, what: str) -> int | float:
    """A real number as an ``int`` or ``float``.

    Raises:
        TypeError: it is not a real number (a bool is not one).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)
