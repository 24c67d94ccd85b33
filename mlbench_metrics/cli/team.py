"""The command line for a team's server: ``serve --workers N`` and ``db copy``.

``serve`` itself is in ``main.py``; with ``--workers`` above 1 it hands over to
:func:`serve_workers`, which binds the port, starts the processes
(:mod:`mlbench_metrics.server.workers`) and prints the ready line once all listen.
The token and the database URL reach the processes through their environment, never
their command line (which ``ps`` shows to every user of the machine).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
from typing import Final

from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError

__all__ = ["DB_ENV", "TOKEN_ENV", "add_team_options", "cmd_db_copy", "serve_workers"]

DB_ENV: Final = "MLBENCH_METRICS_DB"
"""``serve``'s database when ``--db`` is not given (a file or a ``postgresql://`` URL)."""

TOKEN_ENV: Final = "MLBENCH_METRICS_SERVER_TOKEN"
"""``serve``'s bearer token when ``--token`` is not given (from a Kubernetes Secret, say)."""


def add_team_options(serve: argparse.ArgumentParser, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``serve``'s options for a team's server, and the ``db`` command."""
    from .main import _positive_float, _positive_int  # main imports this module: not at its top

    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="N server processes on one port (needs --db postgresql://...)",
    )
    serve.add_argument(
        "--db-pool", type=_positive_int, default=None, metavar="N", help="PostgreSQL connections per process"
    )
    serve.add_argument(
        "--db-pool-timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help="seconds a request waits for a free database connection before a 503 (default 5)",
    )
    serve.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    db = sub.add_parser("db", help="move runs between databases")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    copy = db_sub.add_parser(
        "copy", help="copy a SQLite file's runs into a PostgreSQL database, exactly once (rerun to resume)"
    )
    copy.add_argument("source", help="the SQLite file (a laptop's metrics.db)")
    copy.add_argument("target", help="postgresql://USER@HOST:PORT/DB")
    copy.set_defaults(func=cmd_db_copy)


def serve_workers(args: argparse.Namespace, db: str, token: str | None) -> int:
    """``serve --workers N`` (N > 1): the parent of N server processes (see the module)."""
    from ..server import ready_line
    from ..server._conn import listen_socket
    from ..server.database import StoreError, is_database_url
    from ..server.store import Store
    from ..server.workers import Supervisor, WorkersFailed

    if not is_database_url(db):
        raise CliError(
            "--workers needs a PostgreSQL database (--db postgresql://...): SQLite takes one writer at a time, "
            "so more processes would only queue on its lock",
            EXIT_USAGE,
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.pace is not None:
        raise CliError("--pace imitates one dashboard process; it cannot be combined with --workers", EXIT_USAGE)
    try:
        Store(db).close()  # reachable, and the schema made once before the processes start
    except StoreError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.exec_runs and not token:
        token = secrets.token_urlsafe(24)  # one for every process
    try:
        sock = listen_socket(args.host, args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc}", EXIT_USAGE) from None
    port = sock.getsockname()[1]
    child_args = ["--host", args.host, "--port", str(port), "--max-body", str(args.max_body)]
    child_args += ["--writer-timeout", str(args.writer_timeout)]
    for name in args.allow_host:
        child_args += ["--allow-host", name]
    child_args += ["--no-extensions"] if args.no_extensions else []
    child_args += ["--exec"] if args.exec_runs else []
    child_args += ["--exec-workdir", args.exec_workdir] if args.exec_workdir else []
    child_args += ["--db-pool", str(args.db_pool)] if args.db_pool else []
    child_args += ["--db-pool-timeout", str(args.db_pool_timeout)] if args.db_pool_timeout is not None else []
    env = {DB_ENV: db, **({TOKEN_ENV: token} if token else {})}
    supervisor = Supervisor(sock, child_args, args.workers, env=env)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        supervisor.start()
        host = args.host if ":" not in args.host else f"[{args.host}]"
        print(ready_line(f"http://{host}:{port}"), flush=True)
        print(f"{args.workers} server processes (pids {', '.join(map(str, supervisor.pids))}) on one port")
        if token and not args.token and not os.environ.get(TOKEN_ENV):
            print("token: generated for --exec; clients need it (--token, or in the environment):")
            print(f"    export MLBENCH_METRICS_TOKEN={token}")
        print("Ctrl-C stops the server", flush=True)
        parent = os.getppid()
        while not stop.wait(0.2):
            supervisor.check()
            if args.exit_with_parent and os.getppid() != parent:
                break  # the process that spawned us is gone: do not linger as an orphan
    except WorkersFailed as exc:
        raise CliError(str(exc), EXIT_FAILED) from None
    finally:
        supervisor.stop()
        sock.close()
    return EXIT_OK


def cmd_db_copy(args: argparse.Namespace) -> int:
    """``db copy SQLITE_FILE postgresql://...``: every run not copied yet, each exactly once."""
    from ..server.copy import copy_database
    from ..server.database import StoreError, is_database_url
    from ..server.store import Store

    if is_database_url(args.source) or not os.path.isfile(args.source):
        raise CliError(f"{args.source} is not a SQLite file (the source is a laptop's metrics.db)", EXIT_USAGE)
    if not is_database_url(args.target):
        raise CliError(f"{args.target} is not a postgresql:// URL", EXIT_USAGE)
    try:
        source = Store(args.source)
    except StoreError as exc:
        raise CliError(f"cannot open {args.source}: {exc}", EXIT_USAGE) from None
    try:
        target = Store(args.target)
    except StoreError as exc:
        source.close()
        raise CliError(str(exc), EXIT_USAGE) from None
    try:
        report = copy_database(source, target, progress=lambda line: print(line, flush=True))
    except (StoreError, ValueError) as exc:
        raise CliError(f"{exc} (what was copied stays; run the command again to resume)", EXIT_FAILED) from None
    finally:
        source.close()
        target.close()
    print(
        f"copied {report.copied:,} run(s) and pod(s) with {report.points:,} points to {target.path}; "
        f"{report.already:,} were copied before"
    )
    if report.unreadable:
        print(
            f"mlbench-metrics: error: {args.source} is damaged: {len(report.unreadable)} not copied "
            f"({', '.join(report.unreadable)})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
