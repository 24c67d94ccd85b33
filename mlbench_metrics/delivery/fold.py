"""Folding: many records of a series become one aggregate point, and what stays raw.

A server without the batch endpoint (the dashboard) stores a few dozen single posts a
second. When records arrive faster than that, the aggregator (``aggregator.py``) sends,
for each series, one point standing for many records. This module decides, for a set of
records, which of them are folded and into which points, and builds those points. It is
pure: no threads, no I/O, no clock.

What a point holds, per kind of series (one series is one name and one ``cumulative``
flag; names keep their ``" @ <rank>"``, so a chart's line goes on where it was):

=================== ======================================================================
numbers             the **mean** as the value, dated and stepped where it stands: at the
                    mean date and step of its records (the window's middle), so a
                    trend drawn through raw points and aggregates stays one line, not a
                    staircase; ``count``, ``min``, ``max``, ``first_step``,
                    ``last_step`` in the metadata
cumulative totals   the **last** total at the last record's date and step (the dashboard
                    draws a rate between consecutive points, so the rate over the
                    window stays exact), same metadata
text values         sent **raw**: text cannot be averaged, and is rare
``TaskResult``      sent **raw**: the dashboard reads it by name (``official_result.txt``)
a single record     sent **raw**: a series seen once in a window (per-epoch stats)
=================== ======================================================================

The metadata of a point is the last record's (rank, epoch and extra keys kept, its
``step`` replaced by the point's) with ``"aggregate": "mean"`` or ``"last"`` and the fields above added.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final, Sequence

from ..records import MetricBatch, SteppedMetadata, value_to_str

__all__ = ["FoldPlan", "Row", "plan_fold", "rows_of"]

RAW_NAMES: Final = ("TaskResult",)
"""Series whose name contains one of these are never folded."""


@dataclass(frozen=True)
class Row:
    """One record as the folding sees it."""

    name: str
    value: Any
    date_us: int
    metadata: str
    cumulative: bool
    step: int | None


@dataclass
class FoldPlan:
    """What to send for a set of rows.

    Attributes:
        raw: indices of the rows sent as they are.
        groups: for each aggregate point, the indices of the rows it stands for.
        points: the aggregate points, one per group, in the same order.
    """

    raw: list[int] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)
    points: MetricBatch = field(default_factory=MetricBatch)

    @property
    def folded(self) -> int:
        """How many rows the points stand for."""
        return sum(len(g) for g in self.groups)


def rows_of(batch: MetricBatch, indices: Sequence[int] | None = None) -> list[Row]:
    """The batch's records (those at ``indices``, else all) as rows, with their steps.

    The logger's batches carry steps in their metadata templates; others (read back from
    a spool) carry metadata texts, whose ``"step"`` is read when there is one.
    """
    picked = range(len(batch)) if indices is None else indices
    texts = batch.metadata_texts()
    steps = _steps(batch.metadata)
    names, values, dates, cumulative = batch.names, batch.values, batch.dates_us, batch.cumulative
    return [
        Row(names[i], values[i], dates[i], texts[i], cumulative[i], steps[i] if steps else _step_in(texts[i]))
        for i in picked
    ]


def plan_fold(rows: Sequence[Row], window_us: int | None = None) -> FoldPlan:
    """Fold ``rows`` per series, into one point per series (``window_us`` None) or per
    series and clock-aligned window of ``window_us`` microseconds.

    Args:
        rows: the records, oldest first.
        window_us: the window's length; None: one window for all of ``rows``.
    """
    plan = FoldPlan()
    groups: dict[tuple[str, bool, int], list[int]] = {}
    for i, row in enumerate(rows):
        if isinstance(row.value, str) or any(raw in row.name for raw in RAW_NAMES):
            plan.raw.append(i)
            continue
        window = row.date_us // window_us if window_us else 0
        groups.setdefault((row.name, row.cumulative, window), []).append(i)
    for members in groups.values():
        if len(members) == 1:
            plan.raw.append(members[0])
            continue
        plan.groups.append(members)
        _append_point(plan.points, [rows[i] for i in members])
    plan.raw.sort()
    return plan


def _append_point(points: MetricBatch, rows: list[Row]) -> None:
    last = rows[-1]
    values = [float(r.value) for r in rows]
    finite = [v for v in values if not math.isnan(v)]
    if last.cumulative:
        kind, value, date_us, step = "last", last.value, last.date_us, last.step
    else:  # a mean stands for its records' middle: for a straight trend, the mean's own date
        kind, value = "mean", _mean(values)
        date_us = sum(r.date_us for r in rows) // len(rows)
        steps = [r.step for r in rows if r.step is not None]
        step = round(sum(steps) / len(steps)) if len(steps) == len(rows) else None
    extra = {
        "aggregate": kind,
        "count": len(rows),
        "min": _number(min(finite)) if finite else "nan",
        "max": _number(max(finite)) if finite else "nan",
        "first_step": rows[0].step,
        "last_step": last.step,
    }
    points.append(last.name, value, date_us, _metadata(last.metadata, step, extra), last.cumulative)


def _mean(values: list[float]) -> float:
    try:
        return math.fsum(values) / len(values)
    except (ValueError, OverflowError):  # infinities of both signs: the mean is undefined
        return sum(values) / len(values)


def _number(value: float) -> float | str:
    """A number for JSON metadata: infinities as text (JSON has none)."""
    return value if math.isfinite(value) else value_to_str(value)


def _metadata(text: str, step: int | None, extra: dict[str, Any]) -> str:
    """The last record's metadata with the point's ``step`` (none: no step) and ``extra``."""
    try:
        base = json.loads(text) if text else {}
    except ValueError:
        base = {}
    if not isinstance(base, dict):
        base = {}
    base.pop("step", None)
    if step is not None:
        base["step"] = step
    base.update(extra)
    return json.dumps(base, allow_nan=False, default=str)


def _steps(metadata: Sequence[str]) -> list[int | None] | None:
    """Each record's step, from the logger's templates; None for plain texts."""
    if not isinstance(metadata, SteppedMetadata):
        return None
    n = metadata.size
    index = metadata.template_of if metadata.template_of is not None else [0] * n
    steps = metadata.steps if metadata.steps is not None else [0] * n
    stepped = metadata.stepped
    return [s if stepped[t] else None for t, s in zip(index, steps)]


def _step_in(text: str) -> int | None:
    if '"step"' not in text:
        return None
    try:
        step = json.loads(text).get("step")
    except (ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
