"""The runs table's read: every run with its config and, for chosen metrics, last, min and max.

``GET /api/runs/table/?metric=train_loss&metric=acc&ranks=0|mean`` answers::

    {"ranks": "0", "metrics": [every metric name any run has],
     "runs": [{run as GET /api/runs/ shows it, "config": {...}, "series": n,
               "metrics": {"train_loss": {"last", "min", "max", "count", "ranks"}}}]}

A ranked metric (``loss @ 0``, ``loss @ 1``) is summarised by rank 0 (``ranks=0``, the
default; a run without a rank 0 uses its lowest rank, or the series without a rank),
or by the mean over its ranks of each figure (``ranks=mean``). ``last`` is a number
when the value reads as one, else the text logged; ``min`` and ``max`` are over the
values that are numbers (None when there is none); infinities are ``"inf"``/``"-inf"``.
Nothing here reads points: it takes the kept summaries (:mod:`.summaries`) and the
stored configs. No threads are started here.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from typing import Any, Callable, Final
from urllib.parse import parse_qsl

from ..points import split_name, to_number
from ._http import Request, Response
from .parsing import ApiFailure, json_response
from .run_states import RunStates
from .store import Store
from .summaries import SeriesSummary, finite_or_text

__all__ = ["RunsTable"]

_MAX_METRICS: Final = 50
_RANKS: Final = ("0", "mean")


def _last(summary: SeriesSummary) -> Any:
    value = to_number(summary.last_value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _rank_zero(series: list[tuple[int | None, SeriesSummary]]) -> SeriesSummary:
    ranked = sorted(series, key=lambda item: (item[0] is not None and item[0] != 0, item[0] or 0))
    return ranked[0][1]


def _mean(values: list[Any]) -> Any:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if len(numbers) != len(values) or not numbers:
        return None  # a rank with text, no value or an infinity: no mean to give
    return sum(numbers) / len(numbers)


def _figures(series: list[tuple[int | None, SeriesSummary]], ranks: str) -> dict[str, Any]:
    count = sum(s.count for _, s in series)
    if ranks == "0" or len(series) == 1:
        one = _rank_zero(series)
        return {
            "last": _last(one),
            "min": finite_or_text(one.min_value),
            "max": finite_or_text(one.max_value),
            "count": count,
            "ranks": len(series),
        }
    return {
        "last": _mean([_last(s) for _, s in series]),
        "min": _mean([s.min_value for _, s in series]),
        "max": _mean([s.max_value for _, s in series]),
        "count": count,
        "ranks": len(series),
    }


class RunsTable:
    """The handler of ``GET /api/runs/table/`` over a :class:`~.store.Store`.

    Args:
        store: where runs, configs and summaries live.
        states: shows each run as ``GET /api/runs/`` does (``crashed`` derived, ``started_at``
            and ``last_seen_at`` added).
    """

    def __init__(self, store: Store, states: RunStates) -> None:
        self.store = store
        self.states = states

    def routes(self) -> list[tuple[re.Pattern[str], dict[str, Callable[..., Response]]]]:
        """``(path pattern, {method: handler})``; it goes before ``/api/runs/{id}/``."""
        return [(re.compile(r"/api/runs/table/?"), {"GET": self.table})]

    def table(self, request: Request) -> Response:
        """``GET /api/runs/table/``: runs with config and metric summaries (see the module)."""
        params = parse_qsl(request.query, keep_blank_values=True)
        wanted = list(dict.fromkeys(v for k, v in params if k == "metric" and v))
        if len(wanted) > _MAX_METRICS:
            raise ApiFailure(400, f"at most {_MAX_METRICS} metrics at once; {len(wanted)} were asked for")
        ranks = next((v for k, v in reversed(params) if k == "ranks"), "0") or "0"
        if ranks not in _RANKS:
            raise ApiFailure(400, "parameter 'ranks' must be 0 (rank 0's values) or mean (the mean over ranks)")
        by_run: dict[int, dict[str, list[tuple[int | None, SeriesSummary]]]] = defaultdict(dict)
        counts: dict[int, int] = defaultdict(int)
        names: set[str] = set()
        for summary in self.store.series_summaries():
            metric, rank = split_name(summary.name)
            names.add(metric)
            counts[summary.run_id] += 1
            if metric in wanted:
                by_run[summary.run_id].setdefault(metric, []).append((rank, summary))
        configs = self.store.run_configs()
        stale = self.states.stale_before()
        runs = []
        for run in self.store.list_runs():
            row = self.states.view(run, with_metadata=False, stale_before_us=stale)
            del row["job_metadata"]
            text = configs.get(run["id"])
            row["config"] = json.loads(text) if text else {}
            row["series"] = counts.get(run["id"], 0)
            row["metrics"] = {m: _figures(s, ranks) for m, s in by_run.get(run["id"], {}).items()}
            runs.append(row)
        return json_response(200, {"ranks": ranks, "metrics": sorted(names), "runs": runs})
