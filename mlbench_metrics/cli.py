"""The ``mlbench-metrics`` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Sequence

from ._version import __version__


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
        )
    except (OSError, ValueError) as exc:
        print(f"mlbench-metrics serve: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(ready_line(handle.url), flush=True)
    print(f"database: {handle.db_path}", flush=True)
    parent = os.getppid()
    try:
        while not stop.wait(1.0):
            if args.exit_with_parent and os.getppid() != parent:
                break  # the process that spawned us is gone: do not linger as an orphan
    finally:
        handle.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mlbench-metrics``."""
    parser = argparse.ArgumentParser(prog="mlbench-metrics", description="Record metrics to an MLBench dashboard.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
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
    serve.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
