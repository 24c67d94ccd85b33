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


def _cmd_sync(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .api import ApiClient
    from .config import ENV_URL, env_str
    from .spool import default_spool_root, sync_writer, writer_dirs

    paths = [Path(p) for p in args.dirs] or [default_spool_root()]
    missing = [str(p) for p in paths if not p.exists()]
    if args.dirs and missing:
        print(f"mlbench-metrics sync: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    dirs = list(writer_dirs([p for p in paths if p.exists()]))
    if not dirs:
        print("nothing to sync")
        return 0
    clients: dict[str, ApiClient] = {}
    status = 0
    try:
        for directory in dirs:
            meta = json.loads((directory / "meta.json").read_text())
            url = args.url or env_str(ENV_URL) or str(meta.get("endpoint", "")).removesuffix("/").removesuffix("/api")
            if not url:
                print(f"{directory}: no server address: pass --url", file=sys.stderr)
                status = 1
                continue
            client = clients.get(url)
            if client is None:
                client = clients[url] = ApiClient(url=url, token=args.token)
            sent = 0

            def progress(n: int, directory: Path = directory) -> None:
                nonlocal sent
                sent += n
                if sys.stdout.isatty():
                    print(f"\r{directory.name}: {sent:,} records sent", end="", flush=True)

            report = sync_writer(directory, client, batch_size=args.batch_size, progress=progress)
            if sys.stdout.isatty() and sent:
                print()
            if report.busy:
                print(f"{directory}: skipped, its process is still running (or another sync holds it)")
                continue
            line = (
                f"{directory}: run {report.run_id}: {report.delivered:,} delivered, "
                f"{report.already_stored:,} already stored, {report.failed:,} failed, {report.torn} torn"
            )
            print(line)
            for error in report.errors[:5]:
                print(f"  {error}", file=sys.stderr)
            if not report.ok:
                status = 1
    finally:
        for client in clients.values():
            client.close()
    return status


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
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
