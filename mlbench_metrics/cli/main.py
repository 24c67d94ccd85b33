"""The ``mlbench-metrics`` command line: the parser, ``serve``, ``demo`` and ``sync``.

Commands: ``serve``, ``demo``, ``runs list|create|show|wait|delete``,
``metrics show|download``, ``plot`` and ``sync`` (the ``runs`` and ``metrics`` commands
live in ``runs.py``, the views of points in ``points.py``). Tables for people by
default, ``--json`` for scripts. The options that say which server to talk to
(``--url``, ``--token``, ``--json``, ...) work before or after the command. Errors are
one line on stderr, never a traceback.

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
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from typing import Any, Callable

from .._version import __version__
from ..errors import ApiError, ConfigError, DiscoveryError, MetricsError, TransportError
from .common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    describe_discovery_error,
    describe_transport_error,
    open_client,
    unreachable_hint,
)
from .common import progress_done as _progress_done
from .team import DB_ENV, TOKEN_ENV, add_team_options, serve_workers

__all__ = ["build_parser", "main"]


# -- serve --------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..server import default_db_path, ready_line, serve

    db = args.db or os.environ.get(DB_ENV)
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.workers > 1:
        return serve_workers(args, db or str(default_db_path()), token)
    if db is None:
        path = default_db_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create {path.parent} for the database: {exc}; pass --db FILE") from None
        db = str(path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        handle = serve(
            args.host,
            args.port,
            db,
            token=token,
            allow_hosts=args.allow_host,
            max_body=args.max_body,
            extensions=not args.no_extensions,
            exec_runs=args.exec_runs,
            exec_workdir=args.exec_workdir,
            pace=args.pace,
            pool_size=args.db_pool,
            pool_timeout=args.db_pool_timeout,
            listening=None if args.listen_fd is None else socket.socket(fileno=args.listen_fd),
            writer_timeout=args.writer_timeout,
        )
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):  # the port, not the database
            hint = " (another program listens there: --port N, or --port 0 for a free one)"
            hint = hint if exc.errno == errno.EADDRINUSE else ""
            raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}{hint}", EXIT_USAGE) from None
        raise CliError(str(exc), EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(ready_line(handle.url), flush=True)
    if not args.no_extensions:
        from ..server.pages import page_url

        print(f"web UI: {page_url(handle.url, handle.token)}")  # with the token, the browser logs in once
    print(
        f"database: {handle.store.path}" + ("" if args.db else " (the default; kept after exit; --db FILE for another)")
    )
    if args.exec_runs:
        print("local execution: on (runs with a custom_image_command run on this machine)")
    if handle.token and not token:  # generated: shown once, as Jupyter does
        print("token: generated for --exec; clients need it (--token, or in the environment):")
        print(f"    export MLBENCH_METRICS_TOKEN={handle.token}")
    print("Ctrl-C stops the server", flush=True)
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


# -- sync -----------------------------------------------------------------------------------


def _cmd_sync(args: argparse.Namespace) -> int:
    from .sync import cmd_sync

    return cmd_sync(args)


# -- the parser -------------------------------------------------------------------------------


def _number(kind: Callable[[str], Any], what: str, ok: Callable[[Any], bool]) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that must satisfy ``ok``; errors say ``what`` was expected."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return convert


_positive_float = _number(float, "a positive number", lambda v: v > 0 and v != float("inf"))
_count = _number(int, "a whole number, 0 or more", lambda v: v >= 0)
_positive_int = _number(int, "a whole number, 1 or more", lambda v: v >= 1)
_port = _number(int, "a port number from 0 to 65535", lambda v: 0 <= v <= 65535)


def _server_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options that say which server to talk to, and how to print.

    They are on the main parser (with defaults) and on every command (without, so a
    value given before the command is not overwritten by the command's default).
    """

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--url",
        default=default(None),
        help="the server, host:port or http(s) URL (else $MLBENCH_METRICS_URL, else Kubernetes discovery where "
        "kubectl is configured, else 127.0.0.1:8080)",
    )
    parser.add_argument("--token", default=default(None), help="a bearer token (else $MLBENCH_METRICS_TOKEN)")
    parser.add_argument("--json", action="store_true", default=default(False), help="print JSON instead of a table")
    parser.add_argument(
        "--in-cluster",
        action="store_true",
        default=default(False),
        help="discover the dashboard from inside the cluster",
    )
    parser.add_argument("--namespace", default=default("default"), help="the dashboard's Kubernetes namespace")
    parser.add_argument("--service", default=default(None), help="the dashboard's Kubernetes service name")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mlbench-metrics``."""
    from . import runs as runs_cmd

    parser = argparse.ArgumentParser(
        prog="mlbench-metrics",
        description="Record metrics to an MLBench dashboard, and manage its runs.",
        epilog="exit codes: 0 done, 1 failed or refused, 2 bad usage, 3 server unreachable, 4 timed out",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _server_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    server = argparse.ArgumentParser(add_help=False)
    _server_options(server, defaults=False)

    serve = sub.add_parser("serve", help="run the embedded MLBench-compatible server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    serve.add_argument(
        "--db",
        default=None,
        help="SQLite file or postgresql://USER@HOST:PORT/DB (else $MLBENCH_METRICS_DB, else metrics.db in the "
        "user's data folder)",
    )
    serve.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="require 'Authorization: Bearer TOKEN' (with --exec, one is generated when not given)",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests addressed to NAME (Host header), besides loopback names; repeatable, '*' for any",
    )
    serve.add_argument("--max-body", type=_positive_int, default=64 * 1024 * 1024, help="largest request body in bytes")
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
        help="run created runs' custom_image_command on this machine (always with a token)",
    )
    serve.add_argument("--exec-workdir", default=None, help="working directory of --exec runs")
    serve.add_argument(
        "--writer-timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="a run whose logger stays silent this long without closing reads as crashed (default 60)",
    )
    serve.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)
    add_team_options(serve, sub)

    demo = sub.add_parser("demo", help="train a small model, logging to the embedded server, and summarize")
    demo.add_argument("--url", default=argparse.SUPPRESS, help="use this server instead of starting the embedded one")
    demo.add_argument("--token", default=argparse.SUPPRESS, help="a bearer token for --url")
    demo.add_argument("--seconds", type=_positive_float, default=8.0, help="how long to train (default 8)")
    demo.set_defaults(func=_cmd_demo)

    runs = sub.add_parser("runs", parents=[server], help="list, create, show, wait for and delete runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    p = runs_sub.add_parser("list", parents=[server], help="every run")
    p.set_defaults(func=runs_cmd.cmd_runs_list)
    p = runs_sub.add_parser("create", parents=[server], help="create a run")
    p.add_argument("name", help="the run's name: lowercase letters, digits and '-'")
    p.add_argument("--workers", type=_positive_int, default=1, help="number of workers (default 1)")
    p.add_argument("--cpus", type=_positive_float, default=2.0, help="CPU cores per worker (default 2)")
    p.add_argument("--image", default=None, help="an official benchmark, by its MLBENCH_IMAGES name")
    p.add_argument("--custom-image", default=None, help="a Docker image to run instead")
    p.add_argument("--command", default=None, help="the custom image's command ({run_id} {rank} {hosts} {backend})")
    p.add_argument("--backend", default="gloo", help="mpi, gloo or nccl (default gloo)")
    p.add_argument("--custom-backend", default=None, help="another backend's name")
    p.add_argument("--run-all-nodes", action="store_true", help="run the command on every worker, not only rank 0")
    p.add_argument("--gpu", action="store_true", help="use GPUs")
    p.add_argument("--light", action="store_true", help="the light target goal")
    p.set_defaults(func=runs_cmd.cmd_runs_create)
    p = runs_sub.add_parser("show", parents=[server], help="one run, with the tails of its output")
    p.add_argument("run_id", type=_positive_int)
    p.add_argument("--lines", type=_count, default=20, help="output lines to show (default 20)")
    p.set_defaults(func=runs_cmd.cmd_runs_show)
    p = runs_sub.add_parser("wait", parents=[server], help="wait until a run finishes or fails")
    p.add_argument("run_id", type=_positive_int)
    p.add_argument("--timeout", type=_positive_float, default=None, help="give up after this many seconds (exit 4)")
    p.add_argument("--poll", type=_positive_float, default=1.0, help="seconds between polls (default 1)")
    p.set_defaults(func=runs_cmd.cmd_runs_wait)
    p = runs_sub.add_parser("delete", parents=[server], help="delete a run and its metrics")
    p.add_argument("run_id", type=_positive_int)
    p.set_defaults(func=runs_cmd.cmd_runs_delete)

    metrics = sub.add_parser("metrics", parents=[server], help="show or download a run's metrics")
    metrics_sub = metrics.add_subparsers(dest="metrics_command", required=True, metavar="ACTION")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("run_id", type=_positive_int)
    filters.add_argument("--since", default=None, help="only points at or after this date (ISO 8601, UTC)")
    filters.add_argument("--summarize", type=_count, default=None, help="average down to N points per metric")
    filters.add_argument("--last-n", type=_count, default=None, help="only the last N points of each metric")
    filters.add_argument("--filter", default=None, help="only the metric with exactly this name, e.g. 'loss @ 0'")
    p = metrics_sub.add_parser("show", parents=[server, filters], help="a table of the run's metrics")
    p.add_argument(
        "-f", "--follow", action="store_true", help="then print a line per interval as points arrive, until Ctrl-C"
    )
    p.add_argument(
        "--every-point", action="store_true", help="with --follow: a line per point, not per interval (latest values)"
    )
    p.add_argument("--interval", type=_positive_float, default=1.0, help="seconds between polls with --follow")
    p.set_defaults(func=runs_cmd.cmd_metrics_show)
    p = metrics_sub.add_parser("download", parents=[server, filters], help="save the run's metrics to a file")
    p.add_argument("--format", choices=["json", "csv", "zip"], default="zip", help="file format (default zip)")
    p.add_argument("-o", "--output", default=None, help="the file (default run-<id>-metrics.<format>)")
    p.set_defaults(func=runs_cmd.cmd_metrics_download)

    from . import points as cli_points

    p = sub.add_parser("plot", parents=[server], help="draw a run's metrics to a PNG (needs the plot extra)")
    p.add_argument("run_id", type=_positive_int)
    p.add_argument("--metric", action="append", help="only this metric (all its ranks); repeatable")
    p.add_argument("--x", choices=["step", "time"], default="step", help="the x axis (default step)")
    p.add_argument("--since", default=None, help="only points at or after this date (ISO 8601, UTC)")
    p.add_argument("-o", "--output", required=True, help="the PNG file to write")
    p.set_defaults(func=cli_points.plot, open_client=open_client)

    sync = sub.add_parser("sync", help="deliver what dead processes left in their spools")
    sync.add_argument("dirs", nargs="*", help="spool root, run or writer directories (default: the spool root)")
    sync.add_argument(
        "--url", default=argparse.SUPPRESS, help="the server (default: the one each spool was written for)"
    )
    sync.add_argument("--token", default=argparse.SUPPRESS, help="a bearer token for the server")
    sync.add_argument("--batch-size", type=int, default=1000, help="records per batch for unbatched records")
    sync.add_argument(
        "--to",
        default=None,
        metavar="URL",
        help="upload the raw copies of records the run's server got as aggregates to this server "
        "(one with the batch endpoint: each record is stored there once)",
    )
    sync.add_argument("--to-run", type=_positive_int, default=None, help="with --to: the run there (default: same id)")
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
    except TransportError as exc:
        return _fail(describe_transport_error(exc) + unreachable_hint(args), EXIT_UNREACHABLE)
    except DiscoveryError as exc:
        return _fail(describe_discovery_error(exc, args), EXIT_UNREACHABLE)
    except ApiError as exc:
        return _fail(str(exc), EXIT_FAILED)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (MetricsError, OSError) as exc:
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        _progress_done()
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:  # a bug: still one line, with what to report
        return _fail(f"unexpected {type(exc).__name__}: {exc} (this is a bug; please report it)", EXIT_FAILED)


def _fail(message: str, code: int) -> int:
    print(f"mlbench-metrics: error: {message}", file=sys.stderr)
    return code
