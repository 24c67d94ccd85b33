"""The ``runs`` and ``metrics`` commands of ``mlbench-metrics``: one function per subcommand.

Each takes the parsed arguments and returns the exit code, raising
:class:`~mlbench_metrics.cli.common.CliError` for a one-line failure; ``main.py`` owns the
parser and turns every other error into one line. No threads.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    CliError,
    open_client,
    print_json,
    progress,
    progress_done,
)
from .text import metrics_table, table

if TYPE_CHECKING:
    from ..runs import Run

__all__ = [
    "cmd_metrics_download",
    "cmd_metrics_show",
    "cmd_runs_create",
    "cmd_runs_delete",
    "cmd_runs_list",
    "cmd_runs_show",
    "cmd_runs_wait",
]


def _short_date(text: Any) -> str:
    return str(text or "").replace("T", " ")[:19]


def _run_rows(runs: list[Any]) -> list[tuple[Any, ...]]:
    return [
        (
            r.id,
            r.name,
            r.state,
            r.num_workers,
            _short_date(r.as_dict().get("created_at")),
            _short_date(r.as_dict().get("finished_at")),
        )
        for r in runs
    ]


_RUN_HEADERS = ["id", "name", "state", "workers", "created (UTC)", "finished (UTC)"]


# -- runs -------------------------------------------------------------------------------------


def cmd_runs_list(args: argparse.Namespace) -> int:
    """``runs list``: every run, as a table or JSON."""
    from ..runs import Run

    with open_client(args) as client:
        runs = Run.list(client=client)
    if args.json:
        print_json([r.as_dict() for r in runs])
    elif not runs:
        print("no runs")
    else:
        print(table(_RUN_HEADERS, _run_rows(runs)))
    return EXIT_OK


def cmd_runs_create(args: argparse.Namespace) -> int:
    """``runs create``: create a run from an official or a custom image."""
    from ..runs import Run

    if (args.image is None) == (args.custom_image is None):
        raise CliError("give --image (an official benchmark) or --custom-image with --command", EXIT_USAGE)
    if args.custom_image is not None and not args.command:
        raise CliError("--custom-image needs --command (what to run in it)", EXIT_USAGE)
    with open_client(args) as client:
        try:
            run = Run.create(
                args.name,
                args.workers,
                num_cpus=args.cpus,
                image=args.image,
                backend=None if args.custom_backend else args.backend,
                custom_image_name=args.custom_image,
                custom_image_command=args.command,
                custom_backend=args.custom_backend,
                run_all_nodes=args.run_all_nodes,
                gpu_enabled=args.gpu,
                light_target=args.light,
                client=client,
            )
        except ValueError as exc:  # refused before sending: the name, image or backend
            raise CliError(str(exc), EXIT_USAGE) from None
    if args.json:
        print_json(run.as_dict())
    else:
        print(f"created run {run.id} ({run.name}), {run.state}")
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    """``runs show``: one run, with the tails of its stdout and stderr."""
    from ..runs import Run
    from .points import config_text

    with open_client(args) as client:
        run = Run.get(args.run_id, client=client)
        config = config_text(client, run.id)
    if args.json:
        print_json(run.as_dict())
        return EXIT_OK
    print(table(_RUN_HEADERS, _run_rows([run])))
    meta = run.job_metadata
    for stream in ("stdout", "stderr"):
        lines = meta.get(stream) or []
        if lines:
            print(f"\n{stream} (last {min(len(lines), args.lines)} lines):")
            for line in lines[-args.lines :]:
                print(f"  {line}")
    extra = {k: v for k, v in meta.items() if k not in ("stdout", "stderr")}
    if extra:
        print("\njob metadata: " + json.dumps(extra, default=str))
    if config:
        print("\nconfig:\n" + config)
    return EXIT_OK


def cmd_runs_wait(args: argparse.Namespace) -> int:
    """``runs wait``: poll until the run finishes (exit 0) or fails (exit 1)."""
    from ..runs import Run

    started = time.monotonic()
    last_state: list[str] = [""]

    with open_client(args) as client:

        def on_poll(run: Run) -> None:
            elapsed = time.monotonic() - started
            if run.state != last_state[0] or sys.stderr.isatty():
                progress(f"run {run.id} ({run.name}): {run.state}, {elapsed:.0f} s")
                last_state[0] = run.state

        run = Run.get(args.run_id, client=client)
        try:
            run.wait(timeout=args.timeout, poll=args.poll, progress=on_poll)
        except TimeoutError as exc:
            progress_done()
            raise CliError(str(exc), EXIT_TIMEOUT) from None
        except ConfigError as exc:  # the server will never start it
            progress_done()
            raise CliError(str(exc)) from None
    progress_done()
    if args.json:
        print_json(run.as_dict())
    else:
        print(f"run {run.id} ({run.name}) {run.state}")
    return EXIT_OK if run.state == "finished" else EXIT_FAILED


def cmd_runs_delete(args: argparse.Namespace) -> int:
    """``runs delete``: delete a run; fails when the server did not."""
    from ..runs import Run

    with open_client(args) as client:
        Run({"id": args.run_id}, client=client).delete()
    print(f"deleted run {args.run_id}")
    return EXIT_OK


# -- metrics ----------------------------------------------------------------------------------


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"since": args.since, "summarize": args.summarize, "metric_filter": args.filter, "last_n": args.last_n}


def cmd_metrics_show(args: argparse.Namespace) -> int:
    """``metrics show``: a table (or JSON) of the run's metrics."""
    from ..runs import Run

    if args.follow:
        from .points import follow

        return follow(args, open_client)
    with open_client(args) as client:
        run = Run({"id": args.run_id}, client=client)
        try:
            metrics = run.metrics(**_filters(args))
        except ValueError as exc:  # refused before sending: a date that is not one
            raise CliError(str(exc), EXIT_USAGE) from None
        if not metrics:
            _check_filter(run, args.filter)
    if args.json:
        print(_to_json(metrics))
        return EXIT_OK
    if not metrics:
        print(f"run {args.run_id} has no metrics" + (" matching" if args.filter or args.since else ""))
        return EXIT_OK
    print(metrics_table(metrics, when_and_trend=True))
    return EXIT_OK


def cmd_metrics_download(args: argparse.Namespace) -> int:
    """``metrics download``: the run's metrics to a zip, JSON or CSV file."""
    from ..runs import Run

    fmt = args.format
    target = Path(args.output or f"run-{args.run_id}-metrics.{fmt}")
    with open_client(args) as client:
        run = Run({"id": args.run_id}, client=client)
        progress(f"downloading the metrics of run {args.run_id} as {fmt}")
        try:
            if fmt == "zip":
                if args.filter or args.last_n is not None:
                    raise CliError("--filter and --last-n do not apply to --format zip (the server's zip)", EXIT_USAGE)
                run.download(target, since=args.since, summarize=args.summarize)
            else:
                from .points import download

                _check_filter(run, args.filter)
                download(args, client, target)
        except ValueError as exc:  # refused before sending: a date that is not one
            raise CliError(str(exc), EXIT_USAGE) from None
    progress_done()
    print(f"wrote {target} ({target.stat().st_size:,} bytes)")
    return EXIT_OK


def _check_filter(run: Run, name: str | None) -> None:
    """Raise when ``--filter`` names no metric of the run, suggesting the names it has.

    Per-rank names end in `` @ <rank>``, so ``--filter loss`` matches nothing when the
    run has ``loss @ 0`` and ``loss @ 1``: those are what the user meant.
    """
    if not name:
        return
    names = sorted(run.metrics(last_n=1))
    if name in names:
        return  # it exists; --since left nothing of it
    if not names:
        raise CliError(f"run {run.id} has no metrics")
    similar = [n for n in names if n.partition(" @ ")[0] == name or n.startswith(name)]
    similar = similar or difflib.get_close_matches(name, names, n=5)
    message = f"run {run.id} has no metric named {name!r}"
    if similar:
        message += "; did you mean " + ", ".join(repr(n) for n in similar[:10]) + "?"
    else:
        message += f"; it has {', '.join(repr(n) for n in names[:10])}" + (", ..." if len(names) > 10 else "")
    raise CliError(message)


def _to_json(metrics: dict[str, list[Any]]) -> str:
    return json.dumps(
        {name: [{"date": d.isoformat(), "value": v} for d, v in points] for name, points in metrics.items()}, indent=1
    )
