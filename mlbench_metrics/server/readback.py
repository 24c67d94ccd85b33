"""The read-back extension: points with step, epoch, rank and metadata, downsampled for charts.

Routes (all JSON unless asked otherwise; the dashboard has none of them, so clients look
for ``"points"`` and ``"run_config"`` in the API root's ``server.extensions``):

* ``GET /api/runs/stats/``: for each run with metrics, its number of series and points
  and its newest point's date;
* ``GET /api/runs/{id}/details/``: what the dashboard's run shape leaves out (image,
  command, backend, CPU limit, flags) and the run's configuration;
* ``GET|PUT /api/runs/{id}/config/``: the run's configuration (hyperparameters), a JSON
  object of at most 64 KiB, replaced whole by ``PUT {"config": {...}}``;
* ``GET /api/runs/{id}/series/``: the run's series without their points (name, metric,
  rank, count, first and last date, cumulative, whether the newest point has a step) and a
  ``cursor`` to pass as ``after`` to the points route;
* ``GET /api/runs/{id}/points/``: the points themselves, as columns. Parameters:
  ``name`` (exact, repeatable), ``metric`` (a metric with all its ranks: ``loss`` selects
  ``loss @ 0`` and ``loss @ 1``; repeatable), ``metric_filter`` (as on the dashboard),
  ``since``/``until`` (dates, inclusive), ``after`` (a ``cursor`` from an earlier answer:
  only points that arrived since, whatever their dates, for live updates), ``through`` (a
  ``cursor``: only points that had arrived by then, so that a first read and the reads
  ``after`` its cursor never overlap),
  ``max_points`` (downsample each series to at most this many points, keeping each time
  bucket's minimum and maximum, and besides them up to ``max_points`` of its newest text
  values, which are notes rather than points of a curve), ``fields`` (comma-separated subset of
  ``date_us,step,epoch,rank,value,cumulative,metadata``) and ``format`` (``columns``, or
  ``csv``/``json`` for a download with one row per point, see :mod:`mlbench_metrics.points`).
  The columns answer is ``{"run_id", "cursor", "series": [{"name", "metric", "rank",
  "cumulative", "count", "downsampled", "points": {"date_us": [...], "step": [...], ...}}]}``;
  ``count`` is the number of points before downsampling.

Answers larger than a few kilobytes are gzip-compressed for clients that accept it. No
threads are started here.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import struct
import zlib
from array import array
from bisect import bisect_left
from typing import Any, Callable, Final, Iterator, Sequence
from urllib.parse import parse_qsl

from ..points import MetricPoint, csv_pieces, json_pieces, parse_metadata, split_name, to_number
from ..records import parse_date, us_to_datetime
from ._http import Request, Response
from .columns import SeriesColumns
from .parsing import ApiFailure, as_int, json_response, parse_body, path_id, secure_filename
from .store import RunNotFound, Store

__all__ = ["EXTENSIONS", "FIELDS", "ReadBack", "minmax_indices"]

EXTENSIONS: Final = ("points", "run_config")
"""What the API root lists in ``server.extensions`` for these routes."""

FIELDS: Final = ("date_us", "step", "epoch", "rank", "value", "cumulative", "metadata")
"""The per-point columns ``GET /api/runs/{id}/points/`` can return."""

_MAX_CONFIG: Final = 64 * 1024
_GZIP_ABOVE: Final = 4096
_DETAIL_KEYS: Final = ("image", "command", "backend", "cpu_limit", "gpu_enabled", "light_target", "run_on_all_nodes")

Handler = Callable[..., Response]


def minmax_indices(dates: Sequence[int], values: Sequence[Any], buckets: int) -> list[int]:
    """Which points to keep so that each of ``buckets`` equal time spans keeps its min and max.

    The first and last points are always kept, so at most ``2 * buckets + 2`` remain, in
    order. NaN values are never chosen as a bucket's min or max.

    Raises:
        TypeError: a value is not a number.

    Args:
        dates: ascending dates (any unit).
        values: the values, as numbers (NaN where a value is not a number).
        buckets: how many time spans to cut the range into (at least 1).
    """
    n = len(dates)
    if n <= 2 * buckets + 2:
        return list(range(n))
    lo, span = dates[0], dates[-1] - dates[0]
    if span > 0:
        bounds = [bisect_left(dates, lo + span * b // buckets) for b in range(buckets)] + [n]
    else:  # every point at one instant: cut by position instead
        bounds = [n * b // buckets for b in range(buckets + 1)]
    if not isinstance(values, array) and not set(map(type, values)) <= {int, float}:
        raise TypeError("values must be numbers")  # text would compare as text
    position = _first_position(values)
    keep = {0, n - 1}
    for b in range(buckets):
        i0, i1 = bounds[b], bounds[b + 1]
        if i0 >= i1:
            continue
        part = values[i0:i1]
        low = min(part)
        # Every comparison with NaN is false, so min and max pass over a NaN, unless it is
        # the first value, which they then return; only such buckets are sorted out by hand.
        if low != low:
            numbers = [(v, i0 + k) for k, v in enumerate(part) if v == v]
            if numbers:
                keep.add(min(numbers)[1])
                keep.add(max(numbers)[1])
            continue
        keep.add(position(part, i0, low))
        keep.add(position(part, i0, max(part)))
    return sorted(keep)


def _first_position(values: Sequence[Any]) -> Callable[[Sequence[Any], int, Any], int]:
    """``position(part, i0, value)``: where ``value`` first is in ``part = values[i0:...]``, as an index of ``values``.

    For an array, the first match of the value's bytes at a multiple of the item size
    (``bytes.find``, at memory speed, where ``index`` compares item by item): min and
    max return the first of equal values, so no equal value with other bytes (-0.0 for
    0.0) comes before it.
    """
    if not isinstance(values, array):
        return lambda part, i0, value: i0 + part.index(value)
    raw, size, code = values.tobytes(), values.itemsize, values.typecode

    def position(part: Sequence[Any], i0: int, value: Any) -> int:
        pattern = struct.pack(code, value)
        at = raw.find(pattern, size * i0)
        while at % size and at > 0:  # a match across two items
            at = raw.find(pattern, at + 1)
        return at // size if at >= 0 else i0 + part.index(value)

    return position


def _as_floats(values: Sequence[Any]) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        out = []
        for v in values:
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                out.append(math.nan)
        return out


def _is_text(value: Any) -> bool:
    """Whether a stored value is words rather than a number (``"nan"`` and ``"1e3"`` are numbers)."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False


def _json_value(value: Any) -> Any:
    """A stored value for a JSON answer: numbers as numbers, NaN and infinities as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in parse_qsl(request.query, keep_blank_values=True):
        params.setdefault(key, []).append(value)
    return params


def _date_param(params: dict[str, list[str]], key: str) -> int | None:
    text = params.get(key, [""])[-1]
    if not text:
        return None
    try:
        return parse_date(text)
    except ValueError as exc:
        raise ApiFailure(400, f"parameter {key!r}: {exc}") from None


def _int_param(params: dict[str, list[str]], key: str) -> int:
    text = params.get(key, [""])[-1]
    return as_int(text, key, minimum=0) if text else 0


def _compressed(response: Response, request: Request) -> Response:
    """Gzip a large answer when the client accepts it (browsers and requests do)."""
    if len(response.body) > _GZIP_ABOVE and "gzip" in request.headers.get("accept-encoding", ""):
        response.body = gzip.compress(response.body, compresslevel=1)
        response.headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
    return response


class ReadBack:
    """The handlers of the read-back extension over a :class:`~.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def routes(self) -> list[tuple[re.Pattern[str], dict[str, Handler]]]:
        """``(path pattern, {method: handler})`` pairs; they go before the dashboard's routes."""
        run = r"/api/runs/(?P<pk>[^/]+)"
        return [
            (re.compile(r"/api/runs/stats/?"), {"GET": self.stats}),
            (re.compile(run + r"/details/?"), {"GET": self.details}),
            (re.compile(run + r"/config/?"), {"GET": self.get_config, "PUT": self.put_config}),
            (re.compile(run + r"/series/?"), {"GET": self.series}),
            (re.compile(run + r"/points/?"), {"GET": self.points}),
        ]

    def _run(self, pk: str) -> dict[str, Any]:
        run_id = path_id(pk)
        run = None if run_id is None else self.store.get_run(run_id)
        if run is None:
            raise ApiFailure(404, f"run {pk[:40]!r} not found")
        return run

    def stats(self, request: Request) -> Response:
        """``GET /api/runs/stats/``: series, points and newest date of each run with metrics."""
        runs = {
            str(run_id): {"series": series, "points": points, "last_us": last}
            for run_id, (series, points, last) in self.store.run_stats().items()
        }
        return json_response(200, {"runs": runs})

    def details(self, request: Request, pk: str) -> Response:
        """``GET /api/runs/{id}/details/``: the run's stored fields the dashboard shape omits, and its config."""
        run = self._run(pk)
        config = self.store.get_run_config(run["id"])
        extra = {key: run[key] for key in _DETAIL_KEYS}
        return json_response(200, {"id": run["id"], **extra, "config": json.loads(config) if config else {}})

    def get_config(self, request: Request, pk: str) -> Response:
        """``GET /api/runs/{id}/config/``: ``{"config": {...}}`` (empty when none was stored)."""
        run = self._run(pk)
        config = self.store.get_run_config(run["id"])
        return json_response(200, {"config": json.loads(config) if config else {}})

    def put_config(self, request: Request, pk: str) -> Response:
        """``PUT /api/runs/{id}/config/`` with ``{"config": {...}}``: store the run's configuration."""
        run = self._run(pk)
        if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/json":
            raise ApiFailure(415, 'send the config as application/json: {"config": {...}}')
        config = parse_body(request).get("config")
        if not isinstance(config, dict):
            raise ApiFailure(400, "field 'config' must be a JSON object")
        try:
            text = json.dumps(config, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        except ValueError:
            raise ApiFailure(400, "field 'config' must not hold NaN or infinities") from None
        if len(text.encode()) > _MAX_CONFIG:
            raise ApiFailure(413, f"the config is {len(text.encode()):,} bytes; the limit is {_MAX_CONFIG:,}")
        try:
            self.store.set_run_config(run["id"], text)
        except RunNotFound:
            raise ApiFailure(404, f"run {run['id']} not found") from None
        return json_response(200, {"config": config})

    def series(self, request: Request, pk: str) -> Response:
        """``GET /api/runs/{id}/series/``: the run's series, without points."""
        run = self._run(pk)
        out = []
        cursor = 0
        for entry in self.store.series_catalog(run["id"]):
            metric, rank = split_name(entry["name"])
            step, _, meta_rank = parse_metadata(entry["last_metadata"])
            cursor = max(cursor, entry["cursor"])
            out.append(
                {
                    "name": entry["name"],
                    "metric": metric,
                    "rank": rank if rank is not None else meta_rank,
                    "count": entry["count"],
                    "first_us": entry["first_us"],
                    "last_us": entry["last_us"],
                    "cumulative": entry["cumulative"],
                    "has_step": step is not None,
                }
            )
        return json_response(200, {"run_id": run["id"], "cursor": cursor, "series": out})

    def points(self, request: Request, pk: str) -> Response:
        """``GET /api/runs/{id}/points/``: points with step, epoch, rank and metadata (see the module)."""
        run = self._run(pk)
        params = _params(request)
        fmt = params.get("format", ["columns"])[-1] or "columns"
        if fmt not in ("columns", "csv", "json"):
            raise ApiFailure(400, f"unknown format {fmt[:20]!r}; use columns, csv or json")
        fields = [f for f in ",".join(params.get("fields", [])).split(",") if f] or list(FIELDS)
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ApiFailure(400, f"unknown field(s) {', '.join(unknown)[:80]}; use {', '.join(FIELDS)}")
        names = self._names(run["id"], params)
        max_points = _int_param(params, "max_points")
        since_us, until_us = _date_param(params, "since"), _date_param(params, "until")
        live = params.get("after", [""])[-1] or params.get("through", [""])[-1]
        if fmt != "columns" and not max_points and not live:  # a whole run's download: streamed
            pieces = self.store.series_pieces(run["id"], names, (since_us, until_us))
            return self._export(run, pieces, fmt, 0, request)
        columns = self.store.series_columns(
            run["id"],
            names,
            since_us=since_us,
            until_us=until_us,
            after_id=_int_param(params, "after"),
            through_id=_int_param(params, "through") if params.get("through", [""])[-1] else None,
        )
        cursor = max([c.cursor for c in columns], default=_int_param(params, "after"))
        if fmt != "columns":
            return self._export(run, iter(columns), fmt, max_points, request)
        out = [self._series_json(c, fields, max_points) for c in columns]
        return _compressed(json_response(200, {"run_id": run["id"], "cursor": cursor, "series": out}), request)

    def _names(self, run_id: int, params: dict[str, list[str]]) -> list[str] | None:
        exact = params.get("name", []) + [n for n in params.get("metric_filter", []) if n]
        metrics = [m for m in params.get("metric", []) if m]
        if not exact and not metrics:
            return None
        names = set(exact)
        if metrics:
            wanted = set(metrics)
            names.update(e["name"] for e in self.store.series_catalog(run_id) if split_name(e["name"])[0] in wanted)
        return sorted(names)

    @staticmethod
    def _keep(columns: SeriesColumns, max_points: int) -> list[int]:
        n = len(columns)
        if not max_points or n <= max_points:
            return list(range(n))
        buckets = max(1, (max_points - 2) // 2)
        try:  # values sent as numbers compare as they are; text (or a mix) is converted first
            return minmax_indices(columns.dates, columns.values, buckets)
        except TypeError:
            numbers = _as_floats(columns.values)
            # Text ("warming up") is no point of a curve, so no bucket's min or max: the
            # newest max_points of it are kept besides, for the run page's list of notes.
            text = [i for i, (v, f) in enumerate(zip(columns.values, numbers)) if f != f and _is_text(v)]
            return sorted(set(minmax_indices(columns.dates, numbers, buckets)).union(text[-max_points:]))

    def _series_json(self, columns: SeriesColumns, fields: list[str], max_points: int) -> dict[str, Any]:
        keep = self._keep(columns, max_points)
        metadata, cumulative = columns.details(keep)
        metric, name_rank = split_name(columns.name)
        parsed = [parse_metadata(m) for m in metadata] if {"step", "epoch", "rank"} & set(fields) else []
        _, last_cumulative = columns.details([len(columns) - 1])
        ranks = [p[2] if p[2] is not None else name_rank for p in parsed]
        out: dict[str, Any] = {
            "name": columns.name,
            "metric": metric,
            "rank": name_rank if name_rank is not None or not ranks else ranks[0],
            "cumulative": last_cumulative[0],
            "count": len(columns),
            "downsampled": len(keep) < len(columns),
        }
        dates, values = columns.dates, columns.values
        builders: dict[str, Callable[[], list[Any]]] = {
            "date_us": lambda: [dates[i] for i in keep],
            "step": lambda: [p[0] for p in parsed],
            "epoch": lambda: [p[1] for p in parsed],
            "rank": lambda: ranks,
            "value": lambda: [_json_value(values[i]) for i in keep],
            "cumulative": lambda: cumulative,
            "metadata": lambda: metadata,
        }
        out["points"] = {f: builders[f]() for f in fields}
        return out

    def _export(
        self, run: dict[str, Any], columns: Iterator[SeriesColumns], fmt: str, max_points: int, request: Request
    ) -> Response:
        """One row per point (``format=csv|json``), as ``metrics download`` writes them, streamed:
        rows are made a few thousand at a time as the client reads (gzip-compressed as they
        go when it accepts that), so a run of millions of points never sits whole in memory.
        Text that cannot be UTF-8 (a lone surrogate stored before the server refused them)
        comes out escaped (``\\udcff``), in CSV as in JSON."""

        def rows(c: SeriesColumns) -> Iterator[MetricPoint]:
            keep = self._keep(c, max_points)
            name_rank = split_name(c.name)[1]
            for start in range(0, len(keep), 4096):
                part = keep[start : start + 4096]
                metadata, cumulative = c.details(part)
                for i, meta, cum in zip(part, metadata, cumulative):
                    step, epoch, rank = parse_metadata(meta)
                    rank = rank if rank is not None else name_rank
                    yield MetricPoint(us_to_datetime(c.dates[i]), to_number(c.values[i]), step, epoch, rank, cum, meta)

        pieces = (csv_pieces if fmt == "csv" else json_pieces)((c.name, rows(c)) for c in columns)
        encoded: Iterator[bytes] = (piece.encode("utf-8", "backslashreplace") for piece in pieces)
        filename = f"metrics_{secure_filename(run['name'])}.{fmt}"
        media = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        headers = [("Content-Disposition", f"attachment; filename={filename}")]
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
            encoded = _gzipped(encoded)
        return Response(200, b"", media, headers, stream=encoded)


def _gzipped(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """``pieces`` gzip-compressed as they come (level 1, as :func:`_compressed`)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    for piece in pieces:
        out = compressor.compress(piece)
        if out:
            yield out
    yield compressor.flush()
