"""Metrics and batches: the shapes every delivery path works on.

* :class:`Metric`: one point as the dashboard stores it (what users build);
* :class:`MetricBatch`: many points of one run in columns (what is sent, spooled, stored);
* :class:`Context` and :data:`Record`: what the logger's hot path appends, and
  :func:`encode`, which turns such records into a batch in a few C-speed passes.

Encoding to and decoding from the wire lives in ``codec.py``; what a valid name or value
is, in ``checks.py``. No threads, no I/O.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union, cast

from .checks import SERVER_VALUE_MAX, Value, check_flag, name_problem, value_problem
from .dates import parse_date, to_us

__all__ = [
    "Context",
    "Metric",
    "MetricBatch",
    "Record",
    "SteppedMetadata",
    "as_batch",
    "batch_problem",
    "encode",
    "encode_columns",
    "metadata_to_str",
    "value_to_str",
]


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


class SteppedMetadata(Sequence[str]):
    """Metadata of many records as a few templates and a step per record.

    Record ``i``'s text is ``templates[t] % steps[i]`` when template ``t`` (``template_of[i]``,
    or 0 without an index) is stepped, else ``templates[t]`` itself. The logger builds
    this instead of one string per record (the step is what differs); the texts are made
    only when asked for, and the packed batch form sends the parts as they are.

    Args:
        templates: the distinct metadata texts; stepped ones hold one ``%d`` (and ``%%``
            for a literal ``%``).
        stepped: for each template, whether it takes a step.
        template_of: the template of each record, or None when there is only one.
        steps: the step of each record (ignored for plain templates), or None.
        count: how many records.
    """

    __slots__ = ("_texts", "size", "stepped", "steps", "template_of", "templates")

    def __init__(
        self,
        templates: list[str],
        stepped: list[bool],
        template_of: list[int] | None,
        steps: list[int] | None,
        size: int,
    ) -> None:
        self.templates = templates
        self.stepped = stepped
        self.template_of = template_of
        self.steps = steps
        self.size = size
        self._texts: list[str] | None = None

    def texts(self) -> list[str]:
        """Every record's metadata text (made once, then kept)."""
        if self._texts is None:
            n = self.size
            index = self.template_of if self.template_of is not None else [0] * n
            steps = self.steps if self.steps is not None else [0] * n
            templates, stepped = self.templates, self.stepped
            self._texts = [templates[t] % s if stepped[t] else templates[t] for t, s in zip(index, steps)]
        return self._texts

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: Any) -> Any:
        return self.texts()[i]

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts())


class MetricBatch:
    """Metrics for one run in columns, the shape every delivery path works on.

    The dispatcher fills the columns directly (no per-metric object); ``from_metrics``
    builds one from :class:`Metric` objects or mappings. ``batch_id`` makes re-sends
    idempotent on servers with the batch endpoint.
    """

    __slots__ = ("_dates_ns", "_dates_us", "batch_id", "cumulative", "metadata", "names", "values")

    def __init__(
        self,
        names: list[str] | None = None,
        values: list[Any] | None = None,
        dates_us: list[int] | None = None,
        metadata: Sequence[str] | None = None,
        cumulative: list[bool] | None = None,
        batch_id: str | None = None,
        *,
        dates_ns: list[int] | None = None,
    ) -> None:
        self.names: list[str] = names if names is not None else []
        self.values: list[Any] = values if values is not None else []  # text, or numbers to be made text
        self._dates_us = dates_us if dates_us is not None or dates_ns is not None else []
        self._dates_ns = dates_ns  # the logger's timestamps; microseconds are derived when asked for
        self.metadata: Sequence[str] = metadata if metadata is not None else []  # a list, or SteppedMetadata
        self.cumulative: list[bool] = cumulative if cumulative is not None else []
        self.batch_id = batch_id

    @property
    def dates_ns(self) -> list[int] | None:
        """Each metric's time in nanoseconds, as the logger took it; None for other batches."""
        return self._dates_ns

    @property
    def dates_us(self) -> list[int]:
        """Each metric's date in microseconds since the epoch (UTC)."""
        if self._dates_us is None:
            assert self._dates_ns is not None
            self._dates_us = [t // 1000 for t in self._dates_ns]
        return self._dates_us

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"MetricBatch({len(self)} metrics, batch_id={self.batch_id!r})"

    def append(self, name: str, value: Any, date_us: int, metadata: str = "", cumulative: bool = False) -> None:
        """Add one metric: a text or numeric value, a date in microseconds, metadata text."""
        if not isinstance(self.metadata, list):
            self.metadata = list(self.metadata)
        dates = self.dates_us
        self._dates_ns = None
        self.names.append(name)
        self.values.append(value)
        dates.append(date_us)
        self.metadata.append(metadata)
        self.cumulative.append(cumulative)

    def rows(self) -> Iterator[tuple[str, Any, int, str, bool]]:
        """``(name, value, date_us, metadata, cumulative)`` for each metric, in order."""
        return zip(self.names, self.values, self.dates_us, self.metadata_texts(), self.cumulative)

    def subset(self, indices: Iterable[int]) -> MetricBatch:
        """A new batch (with no id) of the metrics at ``indices``."""
        out = MetricBatch()
        metadata = self.metadata_texts()
        for i in indices:
            out.append(self.names[i], self.values[i], self.dates_us[i], metadata[i], self.cumulative[i])
        return out

    def metadata_texts(self) -> list[str]:
        """Every metric's metadata text."""
        metadata = self.metadata
        return metadata.texts() if isinstance(metadata, SteppedMetadata) else list(metadata)

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
                check_flag(m.cumulative),
            )
        return batch


def as_batch(metrics: MetricBatch | Sequence[Metric | Mapping[str, Any]], now_us: int) -> MetricBatch:
    """``metrics`` as a :class:`MetricBatch` (returned as is when it already is one)."""
    if isinstance(metrics, MetricBatch):
        return metrics
    return MetricBatch.from_metrics(metrics, now_us)


# -- the logger's records ------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What records logged between two changes of epoch or step have in common."""

    rank: int | None
    epoch: int
    step: int | None
    cumulative: bool = False
    extra: str = ""  # extra metadata as JSON members, e.g. ', "lr": 0.1'
    plain: str = field(init=False, compare=False, repr=False)
    stepped: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        head = "{" if self.rank is None else f'{{"rank": {self.rank}, '
        prefix = f'{head}"epoch": {self.epoch}'
        # The step goes in with %, so a literal % in the extra metadata is doubled.
        stepped = f'{prefix}, "step": %d{self.extra.replace("%", "%%")}}}'
        # Precomputed once per context, so encoding a record costs one lookup or one %.
        object.__setattr__(self, "stepped", stepped)
        object.__setattr__(self, "plain", f"{prefix}{self.extra}}}" if self.step is None else stepped % self.step)

    def metadata(self, step: int | None) -> str:
        """The record's metadata: JSON with rank, epoch and step, as the dashboard's own code."""
        return self.plain if step is None else self.stepped % step


Record = tuple[str, Value, int, Optional[int], Context]
"""What the hot path appends: (name, value, time_ns, step or None, context)."""


def encode(records: Sequence[Record], batch_id: str | None = None) -> MetricBatch:
    """Turn hot-path records into a :class:`MetricBatch` (dates in microseconds).

    Values stay numbers: whoever puts them on the wire turns them into text (``str()``
    keeps NaN and infinities as ``nan``/``inf``, which the dashboard stores verbatim).
    Metadata stays templates and steps (see :class:`SteppedMetadata`). This runs in the
    logging process, so it does as little per record as it can: a few list passes.
    """
    names, values, times, steps, contexts = zip(*records)  # one C-speed pass
    return encode_columns(list(names), list(values), list(times), list(steps), contexts, batch_id)


def encode_columns(
    names: list[str],
    values: list[Value],
    times: list[int],
    steps: list[int | None],
    contexts: Sequence[Context],
    batch_id: str | None = None,
) -> MetricBatch:
    """:func:`encode` for records given as columns (the lists become the batch's own)."""
    n = len(names)
    batch = MetricBatch(names=names, values=values, dates_ns=times, batch_id=batch_id)
    ctx = contexts[0]
    if contexts.count(ctx) == n:  # one context (identity compares in C): the common case
        batch.cumulative = [ctx.cumulative] * n
        unstepped = steps.count(None)
        if unstepped == n:
            batch.metadata = [ctx.plain] * n
        elif unstepped == 0:
            batch.metadata = SteppedMetadata([ctx.stepped], [True], None, cast("list[int]", steps), n)
        else:
            index = [0 if s is None else 1 for s in steps]
            numbers = [0 if s is None else s for s in steps]
            batch.metadata = SteppedMetadata([ctx.plain, ctx.stepped], [False, True], index, numbers, n)
    else:  # the epoch (or the extra metadata) changed within the batch
        distinct = list({id(c): c for c in contexts}.values())
        slot = {id(c): 2 * i for i, c in enumerate(distinct)}
        templates = [t for c in distinct for t in (c.plain, c.stepped)]
        index = [slot[id(c)] + (s is not None) for c, s in zip(contexts, steps)]
        numbers = [0 if s is None else s for s in steps]
        batch.metadata = SteppedMetadata(templates, [False, True] * len(distinct), index, numbers, n)
        batch.cumulative = [c.cumulative for c in contexts]
    return batch


def batch_problem(batch: MetricBatch, value_limit: int = SERVER_VALUE_MAX) -> str | None:
    """The first thing wrong with a batch's names or values, or None.

    Whole columns are checked at C speed (a set of names, a set of value types, the
    longest text, the largest and smallest integer); only an odd type is looked at one
    by one.
    """
    for name in set(batch.names):
        problem = name_problem(name)
        if problem is not None:
            return problem
    values = batch.values
    kinds = set(map(type, values))
    if kinds <= {float}:
        return None
    suspects: list[object] = [v for v in values if type(v) not in (float, int, str)]
    if int in kinds:
        integers = [v for v in values if type(v) is int]
        suspects += [max(integers), min(integers)]
    if str in kinds:
        suspects.append(max((v for v in values if type(v) is str), key=len))
    for value in suspects:
        problem = value_problem(value, value_limit)
        if problem is not None:
            return problem
    return None
