"""How stored runs and metrics look on the wire: the dashboard's JSON shapes and its zip.

Dates come out in the dashboard's three formats (see ``records.format_*``). Zip entry
names keep metric and pod names verbatim as the dashboard does (spaces, ``@``), except
what would let an entry escape the folder it is unpacked into: path separators, ``..``,
a leading ``/`` or drive, control characters. No threads, no I/O.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ..records import format_dashboard_date, format_iso_date, format_zip_date
from .parsing import ApiFailure
from .store import Point

__all__ = ["metric_json", "point_json", "run_json", "summarize_points", "zip_entry_name", "zip_metrics"]

_UNSAFE_IN_ENTRY: Final = re.compile(r"[/\\:\x00-\x1f\x7f]|\.\.+")


def run_json(run: Mapping[str, Any], *, with_metadata: bool) -> dict[str, Any]:
    """A run as the dashboard's serializer shows it."""
    finished = run["finished_at"]
    return {
        "id": run["id"],
        "name": run["name"],
        "created_at": format_iso_date(run["created_at"]),
        "finished_at": None if finished is None else format_iso_date(finished),
        "state": run["state"],
        "job_id": run["job_id"],
        "job_metadata": run["job_metadata"] if with_metadata else {},
        "num_workers": run["num_workers"],
    }


def metric_json(name: str, point: Point) -> dict[str, Any]:
    """A metric as the metric serializer shows it (``POST /metrics/``, ``GET /metrics/``)."""
    date_us, value, cumulative, metadata = point
    return {
        "name": name,
        "value": value,
        "date": format_dashboard_date(date_us),
        "metadata": metadata,
        "cumulative": cumulative,
    }


def point_json(point: Point) -> dict[str, Any]:
    """A point of ``GET /metrics/{pk}/``: date, value and cumulative only."""
    return {"date": format_iso_date(point[0]), "value": point[1], "cumulative": point[2]}


def summarize_points(points: list[Point], summarize: int | None, last_n: int | None, name: str) -> list[Point]:
    """Average consecutive points down to at most ``summarize``, then keep the last ``last_n``.

    The dashboard drops the trailing partial group (so the newest points vanish); this
    averages it over its own size instead.

    Raises:
        ApiFailure: a value to average is not a number (400).
    """
    count = len(points)
    if summarize and 0 < summarize < count:
        factor = -(-count // summarize)
        out: list[Point] = []
        for start in range(0, count, factor):
            group = points[start : start + factor]
            total = 0.0
            for point in group:
                try:
                    total += float(point[1])
                except ValueError:
                    raise ApiFailure(
                        400, f"cannot summarize metric {name!r}: value {point[1][:50]!r} is not a number"
                    ) from None
            first = group[0]
            out.append((first[0], str(total / len(group)), first[2], first[3]))
        points = out
    if last_n:
        points = points[-last_n:]
    return points


def zip_entry_name(prefix: str, name: str) -> str:
    """``<prefix>_<name>.json`` with nothing that could leave the folder it is unpacked in.

    Separators, drive colons, control characters and runs of dots become ``_``, so an
    entry is always one plain file name; a lone surrogate (not UTF-8) is escaped first.
    """
    name = f"{prefix}_{name}".encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate: \\udcff
    return _UNSAFE_IN_ENTRY.sub("_", name) + ".json"


def zip_metrics(
    sources: Iterable[tuple[str, Iterable[tuple[str, list[Point]]]]],
    official: str | None,
) -> bytes:
    """The dashboard's zip: one JSON list (indent 4) per series, then ``official_result.txt``.

    Args:
        sources: ``(prefix, series)`` pairs; the first is the run's (``result``), then
            one per pod. Series are ``(name, points)``, already filtered and summarized;
            those named ``*TaskResult*`` are left out, as the dashboard does.
        official: the text of ``official_result.txt``, written after the first source.
    """
    buffer = io.BytesIO()
    seen: set[str] = set()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_DEFLATED) as zf:
        for index, (prefix, series) in enumerate(sources):
            for name, points in series:
                if "TaskResult" in name or not points:
                    continue
                entry = zip_entry_name(prefix, name)
                base, number = entry[: -len(".json")], 2
                while entry in seen:  # two names that sanitise alike keep both files
                    entry, number = f"{base} ({number}).json", number + 1
                seen.add(entry)
                data = [{"date": format_zip_date(p[0]), "value": p[1], "cumulative": p[2]} for p in points]
                zf.writestr(entry, json.dumps(data, indent=4))
            if index == 0 and official is not None:
                zf.writestr("official_result.txt", official.encode("utf-8", "backslashreplace"))
    return buffer.getvalue()
