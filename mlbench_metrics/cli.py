"""The ``mlbench-metrics`` command line.

Commands: ``serve``, ``demo``, ``runs list|create|show|wait|delete``,
``metrics show|download``, ``plot`` and ``sync``. Tables for people by default, ``--json`` for
scripts. Errors are one line on stderr, never a traceback.

Exit codes:
    0  done
    1  the server refused or the work failed: an API error, a run that failed
       (``runs wait``), records left undelivered (``sync``)
    2  bad usage: unknown options, invalid arguments
    3  the server could not be reached (or found in Kubernetes)
    4  ``runs wait`` timed out
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from ._text import metrics_table, table
from ._version import __version__
from .errors import ApiError, ConfigError, DiscoveryError, MetricsError, TransportError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure reported as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- helpers ------------------------------------------------------------------------------


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    from .api import ApiClient

    client = ApiClient(
        url=args.url,
        token=args.token,
        in_cluster=args.in_cluster,
        k8s_namespace=args.namespace,
        service_name=args.service,
        strict=True,
    )
    try:
        yield client
    finally:
        client.close()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


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


def _progress(text: str) -> None:
    """A progress line on stderr: redrawn in place on a terminal, else one line per call."""
    if sys.stderr.isatty():
        print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def _progress_done() -> None:
    if sys.stderr.isatty():
        print(file=sys.stderr)


# -- serve --------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import ready_line, serve

    try:
        handle = serve(
            args.host,
            args.port,
            args.db,
            token=args.token,
            max_body=args.max_body,
            extensions=not args.no_extensions,
            exec_runs=args.exec_runs,
            exec_workdir=args.exec_workdir,
            pace=args.pace,
        )
    except (OSError, ValueError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(ready_line(handle.url), flush=True)
    if not args.no_extensions:
        from .server.pages import page_url

        print(f"web UI: {page_url(handle.url, args.token)}", flush=True)
    print(f"database: {handle.db_path}", flush=True)
    if args.exec_runs:
        print("local execution: on (runs with a custom_image_command run on this machine)", flush=True)
    parent = os.getppid()
    try:
        while not stop.wait(1.0):
            if args.exit_with_parent and os.getppid() != parent:
                break  # the process that spawned us is gone: do not linger as an orphan
    finally:
        handle.stop()
    return EXIT_OK


# -- demo -----------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(url=args.url, token=args.token, seconds=args.seconds)


# -- runs -------------------------------------------------------------------------------------


def _cmd_runs_list(args: argparse.Namespace) -> int:
    from .runs import Run

    with _client(args) as client:
        runs = Run.list(client=client)
    if args.json:
        _print_json([r.as_dict() for r in runs])
    elif not runs:
        print("no runs")
    else:
        print(table(_RUN_HEADERS, _run_rows(runs)))
    return EXIT_OK


def _cmd_runs_create(args: argparse.Namespace) -> int:
    from .runs import Run

    if (args.image is None) == (args.custom_image is None):
        raise CliError("give --image (an official benchmark) or --custom-image with --command", EXIT_USAGE)
    if args.custom_image is not None and not args.command:
        raise CliError("--custom-image needs --command (what to run in it)", EXIT_USAGE)
    with _client(args) as client:
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
        _print_json(run.as_dict())
    else:
        print(f"created run {run.id} ({run.name}), {run.state}")
    return EXIT_OK


def _cmd_runs_show(args: argparse.Namespace) -> int:
    from .cli_points import config_text
    from .runs import Run

    with _client(args) as client:
        run = Run.get(args.run_id, client=client)
        config = config_text(client, run.id)
    if args.json:
        _print_json(run.as_dict())
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


def _cmd_runs_wait(args: argparse.Namespace) -> int:
    from .runs import Run

    started = time.monotonic()
    last_state: list[str] = [""]

    def progress(run: Any) -> None:
        elapsed = time.monotonic() - started
        if run.state != last_state[0] or sys.stderr.isatty():
            _progress(f"run {run.id} ({run.name}): {run.state}, {elapsed:.0f} s")
            last_state[0] = run.state

    with _client(args) as client:
        run = Run.get(args.run_id, client=client)
        try:
            run.wait(timeout=args.timeout, poll=args.poll, progress=progress)
        except TimeoutError as exc:
            _progress_done()
            raise CliError(str(exc), EXIT_TIMEOUT) from None
    _progress_done()
    if args.json:
        _print_json(run.as_dict())
    else:
        print(f"run {run.id} ({run.name}) {run.state}")
    return EXIT_OK if run.state == "finished" else EXIT_FAILED


def _cmd_runs_delete(args: argparse.Namespace) -> int:
    from .runs import Run

    with _client(args) as client:
        Run({"id": args.run_id}, client=client).delete()
    print(f"deleted run {args.run_id}")
    return EXIT_OK


# -- metrics ----------------------------------------------------------------------------------


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {"since": args.since, "summarize": args.summarize, "metric_filter": args.filter, "last_n": args.last_n}


def _cmd_metrics_show(args: argparse.Namespace) -> int:
    from .runs import Run

    if args.follow:
        from .cli_points import follow

        return follow(args, _client)
    with _client(args) as client:
        try:
            metrics = Run({"id": args.run_id}, client=client).metrics(**_filters(args))
        except ValueError as exc:  # refused before sending: a date that is not one
            raise CliError(str(exc), EXIT_USAGE) from None
    if args.json:
        print(_to_json(metrics))
        return EXIT_OK
    if not metrics:
        print(f"run {args.run_id} has no metrics" + (" matching" if args.filter or args.since else ""))
        return EXIT_OK
    print(metrics_table(metrics, when_and_trend=True))
    return EXIT_OK


def _cmd_metrics_download(args: argparse.Namespace) -> int:
    from .runs import Run

    fmt = args.format
    target = Path(args.output or f"run-{args.run_id}-metrics.{fmt}")
    with _client(args) as client:
        run = Run({"id": args.run_id}, client=client)
        _progress(f"downloading the metrics of run {args.run_id} as {fmt}")
        try:
            if fmt == "zip":
                if args.filter or args.last_n is not None:
                    raise CliError("--filter and --last-n do not apply to --format zip (the server's zip)", EXIT_USAGE)
                run.download(target, since=args.since, summarize=args.summarize)
            else:
                from .cli_points import download

                download(args, client, target)
        except ValueError as exc:  # refused before sending: a date that is not one
            raise CliError(str(exc), EXIT_USAGE) from None
    _progress_done()
    print(f"wrote {target} ({target.stat().st_size:,} bytes)")
    return EXIT_OK


def _to_json(metrics: dict[str, list[Any]]) -> str:
    return json.dumps(
        {name: [{"date": d.isoformat(), "value": v} for d, v in points] for name, points in metrics.items()}, indent=1
    )


# -- sync -----------------------------------------------------------------------------------


def _cmd_sync(args: argparse.Namespace) -> int:
    from .api import ApiClient
    from .config import ENV_URL, env_str
    from .spool import default_spool_root, sync_writer, writer_dirs

    paths = [Path(p) for p in args.dirs] or [default_spool_root()]
    missing = [str(p) for p in paths if not p.exists()]
    if args.dirs and missing:
        raise CliError(f"no such directory: {', '.join(missing)}", EXIT_USAGE)
    dirs = list(writer_dirs([p for p in paths if p.exists()]))
    if not dirs:
        print("nothing to sync")
        return EXIT_OK
    clients: dict[str, ApiClient] = {}
    status = EXIT_OK
    try:
        for directory in dirs:
            meta = json.loads((directory / "meta.json").read_text())
            url = args.url or env_str(ENV_URL) or str(meta.get("endpoint", "")).removesuffix("/").removesuffix("/api")
            if not url:
                print(f"{directory}: no server address: pass --url", file=sys.stderr)
                status = EXIT_FAILED
                continue
            client = clients.get(url)
            if client is None:
                client = clients[url] = ApiClient(url=url, token=args.token)
            sent = 0

            def progress(n: int, directory: Path = directory) -> None:
                nonlocal sent
                sent += n
                if sys.stderr.isatty():
                    _progress(f"{directory.name}: {sent:,} records sent")

            report = sync_writer(directory, client, batch_size=args.batch_size, progress=progress)
            if sent:
                _progress_done()
            if report.busy:
                print(f"{directory}: skipped, its process is still running (or another sync holds it)")
                continue
            print(
                f"{directory}: run {report.run_id}: {report.delivered:,} delivered, "
                f"{report.already_stored:,} already stored, {report.failed:,} failed, {report.torn} torn"
            )
            for error in report.errors[:5]:
                print(f"  {error}", file=sys.stderr)
            if not report.ok:
                status = EXIT_FAILED
    finally:
        for client in clients.values():
            client.close()
    return status


# -- the parser -------------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mlbench-metrics``."""
    parser = argparse.ArgumentParser(
        prog="mlbench-metrics",
        description="Record metrics to an MLBench dashboard, and manage its runs.",
        epilog="exit codes: 0 done, 1 failed or refused, 2 bad usage, 3 server unreachable, 4 timed out",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument(
        "--url",
        default=None,
        help="the server, host:port or http(s) URL (else $MLBENCH_METRICS_URL, else Kubernetes discovery)",
    )
    server.add_argument("--token", default=None, help="a bearer token (else $MLBENCH_METRICS_TOKEN)")
    server.add_argument("--in-cluster", action="store_true", help="discover the dashboard from inside the cluster")
    server.add_argument("--namespace", default="default", help="the dashboard's Kubernetes namespace")
    server.add_argument("--service", default=None, help="the dashboard's Kubernetes service name")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON instead of a table")

    serve = sub.add_parser("serve", help="run the embedded MLBench-compatible server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument("--db", default=None, help="SQLite file (default: a temporary one)")
    serve.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN'")
    serve.add_argument("--max-body", type=int, default=64 * 1024 * 1024, help="largest request body in bytes")
    serve.add_argument(
        "--no-extensions",
        action="store_true",
        help="answer like the dashboard: no batch endpoint, run states or pod registration",
    )
    serve.add_argument(
        "--pace",
        type=float,
        default=None,
        metavar="N",
        help="store single metric posts one at a time, about N a second, as slowly as the dashboard (55-90)",
    )
    serve.add_argument(
        "--exec",
        dest="exec_runs",
        action="store_true",
        help="run created runs' custom_image_command on this machine (loopback or --token only)",
    )
    serve.add_argument("--exec-workdir", default=None, help="working directory of --exec runs")
    serve.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)

    demo = sub.add_parser("demo", help="train a small model, logging to the embedded server, and summarize")
    demo.add_argument("--url", default=None, help="use this server instead of starting the embedded one")
    demo.add_argument("--token", default=None, help="a bearer token for --url")
    demo.add_argument("--seconds", type=_positive_float, default=8.0, help="how long to train (default 8)")
    demo.set_defaults(func=_cmd_demo)

    runs = sub.add_parser("runs", help="list, create, show, wait for and delete runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    p = runs_sub.add_parser("list", parents=[server, as_json], help="every run")
    p.set_defaults(func=_cmd_runs_list)
    p = runs_sub.add_parser("create", parents=[server, as_json], help="create a run")
    p.add_argument("name", help="the run's name: lowercase letters, digits and '-'")
    p.add_argument("--workers", type=int, default=1, help="number of workers (default 1)")
    p.add_argument("--cpus", type=float, default=2.0, help="CPU cores per worker (default 2)")
    p.add_argument("--image", default=None, help="an official benchmark, by its MLBENCH_IMAGES name")
    p.add_argument("--custom-image", default=None, help="a Docker image to run instead")
    p.add_argument("--command", default=None, help="the custom image's command ({run_id} {rank} {hosts} {backend})")
    p.add_argument("--backend", default="gloo", help="mpi, gloo or nccl (default gloo)")
    p.add_argument("--custom-backend", default=None, help="another backend's name")
    p.add_argument("--run-all-nodes", action="store_true", help="run the command on every worker, not only rank 0")
    p.add_argument("--gpu", action="store_true", help="use GPUs")
    p.add_argument("--light", action="store_true", help="the light target goal")
    p.set_defaults(func=_cmd_runs_create)
    p = runs_sub.add_parser("show", parents=[server, as_json], help="one run, with the tails of its output")
    p.add_argument("run_id", type=int)
    p.add_argument("--lines", type=_non_negative_int, default=20, help="output lines to show (default 20)")
    p.set_defaults(func=_cmd_runs_show)
    p = runs_sub.add_parser("wait", parents=[server, as_json], help="wait until a run finishes or fails")
    p.add_argument("run_id", type=int)
    p.add_argument("--timeout", type=_positive_float, default=None, help="give up after this many seconds (exit 4)")
    p.add_argument("--poll", type=_positive_float, default=1.0, help="seconds between polls (default 1)")
    p.set_defaults(func=_cmd_runs_wait)
    p = runs_sub.add_parser("delete", parents=[server], help="delete a run and its metrics")
    p.add_argument("run_id", type=int)
    p.set_defaults(func=_cmd_runs_delete)

    metrics = sub.add_parser("metrics", help="show or download a run's metrics")
    metrics_sub = metrics.add_subparsers(dest="metrics_command", required=True, metavar="ACTION")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("run_id", type=int)
    filters.add_argument("--since", default=None, help="only points at or after this date (ISO 8601, UTC)")
    filters.add_argument(
        "--summarize", type=_non_negative_int, default=None, help="average down to N points per metric"
    )
    filters.add_argument("--last-n", type=_non_negative_int, default=None, help="only the last N points of each metric")
    filters.add_argument("--filter", default=None, help="only the metric with exactly this name")
    p = metrics_sub.add_parser("show", parents=[server, as_json, filters], help="a table of the run's metrics")
    p.add_argument("-f", "--follow", action="store_true", help="then print new points as they arrive, until Ctrl-C")
    p.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between polls with --follow")
    p.set_defaults(func=_cmd_metrics_show)
    p = metrics_sub.add_parser("download", parents=[server, filters], help="save the run's metrics to a file")
    p.add_argument("--format", choices=["json", "csv", "zip"], default="zip", help="file format (default zip)")
    p.add_argument("-o", "--output", default=None, help="the file (default run-<id>-metrics.<format>)")
    p.set_defaults(func=_cmd_metrics_download)

    from . import cli_points

    p = sub.add_parser("plot", parents=[server], help="draw a run's metrics to a PNG (needs the plot extra)")
    p.add_argument("run_id", type=int)
    p.add_argument("--metric", action="append", help="only this metric (all its ranks); repeatable")
    p.add_argument("--x", choices=["step", "time"], default="step", help="the x axis (default step)")
    p.add_argument("--since", default=None, help="only points at or after this date (ISO 8601, UTC)")
    p.add_argument("-o", "--output", required=True, help="the PNG file to write")
    p.set_defaults(func=cli_points.plot, open_client=_client)

    sync = sub.add_parser("sync", help="deliver what dead processes left in their spools")
    sync.add_argument("dirs", nargs="*", help="spool root, run or writer directories (default: the spool root)")
    sync.add_argument("--url", default=None, help="the server (default: the one each spool was written for)")
    sync.add_argument("--token", default=None, help="a bearer token for the server")
    sync.add_argument("--batch-size", type=int, default=1000, help="records per batch for unbatched records")
    sync.set_defaults(func=_cmd_sync)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args))
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except (TransportError, DiscoveryError) as exc:
        return _fail(str(exc), EXIT_UNREACHABLE)
    except ApiError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (MetricsError, OSError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        _progress_done()
        return _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> int:
    print(f"mlbench-metrics: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
