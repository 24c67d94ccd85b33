"""The command line's views of points: ``metrics show --follow``, ``plot``, CSV/JSON downloads,
and the run configuration ``runs show`` prints.

``main.py`` parses the arguments and hands over ``args`` with a client factory
(``open_client(args)``, a context manager); errors are raised as the library's own
(:class:`~mlbench_metrics.errors.ConfigError` for usage, ``ApiError`` from the server), so
``cli.main`` reports them in one line. No threads are started here.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ClientApiError, ConfigError, TransientApiError
from ..points import MetricPoint, split_name, write_csv, write_json
from ..records import to_us, us_to_datetime
from .text import fmt_value, printable

if TYPE_CHECKING:
    from ..runs import Run

__all__ = ["config_text", "download", "follow", "plot"]

OpenClient = Callable[[argparse.Namespace], AbstractContextManager[Any]]

PLOT_HINT = "plot needs matplotlib: pip install 'mlbench-metrics[plot]'"


def _line(name: str, date: _dt.datetime, value: Any, step: Any = None, epoch: Any = None) -> str:
    when = date.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    where = "".join(f"  {k} {v}" for k, v in (("step", step), ("epoch", epoch)) if v is not None)
    return f"{when}  {printable(name)}{where}  {fmt_value(value)}"


def _compact(latest: dict[str, tuple[int, Any, Any]], label: str) -> str:
    """One line for one poll: the newest date, ``label``, and each series' newest value (and step)."""
    when = us_to_datetime(max(d for d, _, _ in latest.values())).astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    parts = [
        f"{printable(name)} = {fmt_value(value)}" + ("" if step is None else f" (step {step})")
        for name, (_, value, step) in sorted(latest.items())
    ]
    return f"{when}  {label}  {', '.join(parts)}"


class _Printer:
    """Prints what one poll brought: each point (``--every-point``), or one compact line."""

    def __init__(self, every_point: bool) -> None:
        self.every_point = every_point

    def series(self, answer: list[dict[str, Any]], first: bool = False) -> None:
        """The series of a points answer (the first one's newest point only, as context)."""
        latest: dict[str, tuple[int, Any, Any]] = {}
        count = 0
        for s in answer:
            c = s["points"]
            rows = list(zip(c["date_us"], c["value"], c["step"], c["epoch"]))
            rows = rows[-1:] if first else rows
            if self.every_point:
                for date_us, value, step, epoch in rows:
                    print(_line(s["name"], us_to_datetime(date_us), value, step, epoch), flush=True)
            elif rows:
                count += len(rows)
                latest[s["name"]] = rows[-1][:3]
        if latest:
            print(_compact(latest, "latest" if first else f"+{count} point{'s' if count != 1 else ''}"), flush=True)

    def points(self, new: list[tuple[str, _dt.datetime, Any]], first: bool) -> None:
        """Points without step (the dashboard's), oldest first."""
        if self.every_point:
            for name, date, value in new:
                print(_line(name, date, value), flush=True)
        elif new:
            latest = {name: (to_us(date), value, None) for name, date, value in new}
            count = len(new)
            print(_compact(latest, "latest" if first else f"+{count} point{'s' if count != 1 else ''}"), flush=True)


def follow(args: argparse.Namespace, open_client: OpenClient, *, stop: threading.Event | None = None) -> int:
    """``metrics show RUN --follow``: print each series' newest point, then, each interval, one
    line with each series' newest value and how many points came (every point with
    ``--every-point``), until Ctrl-C.

    Reads by arrival (the points extension's cursor), so a rank that delivers late is
    never skipped; against the dashboard it polls by date instead.

    Returns:
        0 when stopped with Ctrl-C (or ``stop``).
    """
    from ..runs import Run  # imported when used: the command line starts fast

    stop = stop or threading.Event()
    with open_client(args) as client:
        run = Run.get(args.run_id, client=client)
        by_arrival = "points" in client.server_extensions()
        print(f"following run {run.id} ({run.name}); Ctrl-C to stop", file=sys.stderr, flush=True)
        try:
            if by_arrival:
                _follow_points(client, run.id, args, stop)
            else:
                _follow_dates(client, run, args, stop)
        except KeyboardInterrupt:
            pass
    return 0


def _follow_points(client: Any, run_id: int, args: argparse.Namespace, stop: threading.Event) -> None:
    names = [args.filter] if args.filter else None
    down = _Outage()
    catalog: dict[str, Any] | None = None
    while catalog is None:
        with down:
            catalog = _ok(client.get_run_series(run_id).result())
        if catalog is None and stop.wait(args.interval):
            return
    cursor = int(catalog.get("cursor", 0))
    shown = [s["name"] for s in catalog["series"] if not names or s["name"] in names]
    printer = _Printer(bool(getattr(args, "every_point", False)))
    if shown:  # the newest point of each series, as context (through the cursor: never twice)
        with down:
            answer = _ok(client.get_run_points(run_id, names=shown, since=args.since, through=cursor).result())
            printer.series(answer["series"], first=True)
    while not stop.wait(args.interval):
        with down:
            answer = _ok(client.get_run_points(run_id, names=names, after=cursor).result())
            cursor = int(answer["cursor"])
            printer.series(answer["series"])


class _Outage:
    """Following goes on while the server restarts or is busy, as ``tail -f`` would: says so once.

    ``with outage:`` around one poll swallows what the next poll may not meet
    (no answer, 502, 503, 504) and says when the server stops and starts answering.
    """

    def __init__(self) -> None:
        self.down = False

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            if self.down:
                self.down = False
                print("mlbench-metrics: the server answers again", file=sys.stderr, flush=True)
            return False
        if not isinstance(exc, TransientApiError):
            return False
        if not self.down:
            self.down = True
            print(f"mlbench-metrics: the server does not answer ({exc}); still following", file=sys.stderr, flush=True)
        return True


def _follow_dates(client: Any, run: Run, args: argparse.Namespace, stop: threading.Event) -> None:
    """Against the dashboard: ask for points since the newest date seen (``since`` is inclusive)."""
    seen: set[tuple[str, _dt.datetime, Any]] = set()
    since: Any = args.since
    first = True
    down = _Outage()
    printer = _Printer(bool(getattr(args, "every_point", False)))
    while first or not stop.wait(args.interval):
        metrics = None
        with down:
            metrics = run.metrics(since=since, metric_filter=args.filter)
        if metrics is None:
            continue
        new = []
        for name in sorted(metrics):
            for date, value in metrics[name][-1:] if first else metrics[name]:
                if (name, date, value) not in seen:
                    seen.add((name, date, value))
                    new.append((name, date, value))
        printer.points(new, first)
        newest = [date for _, date, _ in seen]
        if newest:
            since = max(newest)
            seen = {key for key in seen if key[1] >= since}  # only the ones the next answer repeats
        first = False


def _ok(response: Any) -> Any:
    if response.status_code >= 400:
        raise ClientApiError(
            f"{response.request.method} {response.url} answered {response.status_code}: {response.text[:200]}",
            status_code=response.status_code,
            body=response.text[:200],
        )
    return response.json()


def _points(
    run: Run, since: str | None, metric_filter: str | None, summarize: int | None = None, last_n: int | None = None
) -> dict[str, list[MetricPoint]]:
    """The run's points with step, epoch and rank; averaged ones (``summarize``) have none."""
    if not summarize:
        return run.metrics(since=since, metric_filter=metric_filter, last_n=last_n, detail=True)
    plain = run.metrics(since=since, summarize=summarize, metric_filter=metric_filter, last_n=last_n)
    return {
        name: [MetricPoint(d, v, None, None, split_name(name)[1], False, "") for d, v in points]
        for name, points in plain.items()
    }


def download(args: argparse.Namespace, client: Any, target: Path) -> None:
    """``metrics download --format csv|json``: one row per point with name, date, step, epoch,
    rank, value, cumulative and metadata; written to a temporary file, then renamed."""
    from ..runs import Run

    series = _points(Run({"id": args.run_id}, client=client), args.since, args.filter, args.summarize, args.last_n)
    tmp = target.with_name(target.name + ".part")
    # errors: text stored before the server refused lone surrogates comes out escaped (\udcff)
    with open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline="") as out:
        (write_csv if args.format == "csv" else write_json)(sorted(series.items()), out)
    tmp.replace(target)


def _rate(points: list[MetricPoint]) -> Iterator[tuple[MetricPoint, float]]:
    """A cumulative series as the dashboard draws it: ``1000 * max(0, dv) / max(1, dt_ms)`` per second."""
    for prev, cur in zip(points, points[1:]):
        try:
            dv = float(cur.value) - float(prev.value)
        except (TypeError, ValueError):
            continue
        dt_ms = (cur.date - prev.date).total_seconds() * 1000
        yield cur, 1000 * max(0.0, dv) / max(1.0, dt_ms)


def plot(args: argparse.Namespace) -> int:
    """``plot RUN [--metric NAME] [--x step|time] -o out.png``: one panel per metric, one line per rank."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(PLOT_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..runs import Run

    with args.open_client(args) as client:
        run = Run.get(args.run_id, client=client)
        series = _points(run, args.since, None)
    wanted = set(args.metric or [])
    groups: dict[str, list[tuple[str, list[MetricPoint]]]] = {}
    for name in sorted(series):
        metric = split_name(name)[0]
        if not wanted or metric in wanted or name in wanted:
            groups.setdefault(metric, []).append((name, series[name]))
    if not groups:
        missing = f"no metric named {', '.join(sorted(wanted))}" if wanted else "no metrics"
        raise ConfigError(f"run {run.id} has {missing}; see: mlbench-metrics metrics show {run.id}")
    start = run.created_at or min(p.date for pts in series.values() for p in pts)
    # Constrained layout keeps the figure's title above the first panel however many there
    # are (tight_layout left it inside the first one once there were a dozen).
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 3.2 * len(groups)), squeeze=False, constrained_layout=True)
    for ax, (metric, lines) in zip(axes[:, 0], groups.items()):
        cumulative = any(p.cumulative for _, pts in lines for p in pts)
        # A panel whose series carry no step is drawn against time, as the web page does.
        x = args.x if args.x != "step" or any(p.step is not None for _, pts in lines for p in pts) else "time"
        for name, pts in lines:
            pairs = list(_rate(pts)) if cumulative else [(p, _float(p.value)) for p in pts]
            xy: list[tuple[float, float]]
            if x == "step":
                xy = [(p.step, y) for p, y in pairs if p.step is not None]
            else:
                xy = [((p.date - start).total_seconds(), y) for p, y in pairs]
            xy.sort(key=lambda item: item[0])
            ax.plot([x for x, _ in xy], [y for _, y in xy], label=name, linewidth=1.2)
        ax.set_title(metric + (" (rate per second)" if cumulative else ""), loc="left")
        ax.set_xlabel("step" if x == "step" else "seconds since start")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.suptitle(f"{run.name} (run {run.id})")
    target = Path(args.output)
    fig.savefig(target, format="png", dpi=100)
    plt.close(fig)
    print(f"wrote {target} ({len(groups)} metric{'s' if len(groups) != 1 else ''})")
    return 0


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def config_text(client: Any, run_id: int) -> str | None:
    """A run's configuration as ``key = value`` lines (nested keys dotted), or None when it has none.

    A server without the ``run_config`` extension (the dashboard) has none to show.
    """
    if "run_config" not in client.server_extensions():
        return None
    config = _ok(client.get_run_config(run_id).result()).get("config") or {}
    lines: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            lines.append(printable(f"  {key} = {value if isinstance(value, str) else json.dumps(value)}"))

    walk(config, "")
    return "\n".join(lines) if config else None
