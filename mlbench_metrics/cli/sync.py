"""The ``sync`` command of ``mlbench-metrics``: spools to the run's server, raw copies elsewhere.

``mlbench-metrics sync [DIR ...] [--url URL]`` delivers what dead processes left to the
server each spool was written for; ``--to URL [--to-run ID]`` uploads instead the raw
copies of records a slow server got as aggregates, to a server with the batch endpoint
(see :mod:`mlbench_metrics.spool.sync`). One line per writer directory on stdout, its
problems on stderr, progress on a terminal. ``main.py`` owns the parser. No threads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..env import ENV_URL, env_str
from ..errors import SpoolError
from ..spool import default_spool_root, sync_raw, sync_writer, writer_dirs
from ..spool.files import read_meta
from ..spool.raw import kept_raw
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, progress, progress_done

if TYPE_CHECKING:
    from ..client.api import ApiClient
    from ..spool import SyncReport

__all__ = ["cmd_sync"]


def cmd_sync(args: argparse.Namespace) -> int:
    """``sync``: each writer directory under the given ones (default: the spool root)."""
    paths = [Path(p) for p in args.dirs] or [default_spool_root()]
    missing = [str(p) for p in paths if not p.exists()]
    if args.dirs and missing:
        raise CliError(f"no such directory: {', '.join(missing)}", EXIT_USAGE)
    dirs = list(writer_dirs([p for p in paths if p.exists()]))
    if args.to is None and args.to_run is not None:
        raise CliError("--to-run goes with --to", EXIT_USAGE)
    if not dirs:
        print("nothing to sync")
        return EXIT_OK
    return _sync_to(args, dirs) if args.to is not None else _sync(args, dirs)


def _sync(args: argparse.Namespace, dirs: list[Path]) -> int:
    from ..client.api import ApiClient

    clients: dict[str, ApiClient] = {}
    status = EXIT_OK
    try:
        for directory in dirs:
            try:
                meta = read_meta(directory)
            except SpoolError as exc:  # kept as it is, for a look; the others go on
                print(f"{directory}: skipped: {exc}", file=sys.stderr)
                status = EXIT_FAILED
                continue
            url = args.url or env_str(ENV_URL) or str(meta.get("endpoint", "")).removesuffix("/").removesuffix("/api")
            if not url:
                print(f"{directory}: no server address: pass --url", file=sys.stderr)
                status = EXIT_FAILED
                continue
            client = clients.get(url)
            if client is None:
                client = clients[url] = ApiClient(url=url, token=args.token)

            def work(
                progress: Callable[[int], None], directory: Path = directory, client: ApiClient = client
            ) -> SyncReport:
                return sync_writer(directory, client, batch_size=args.batch_size, progress=progress)

            report = _run(directory, work, "records sent")
            if report is None:
                continue
            print(
                f"{directory}: run {report.run_id}: {report.delivered:,} delivered, "
                f"{report.already_stored:,} already stored, {report.failed:,} failed, "
                f"{report.torn:,} torn or unreadable"
            )
            if not _ok(report, "not everything in it was delivered"):
                status = EXIT_FAILED
            if report.raw_kept:
                folded = "some" if report.raw_folded is None else f"{report.raw_folded:,}"
                print(
                    f"  {directory}: kept: raw copies of {report.raw_kept:,} records, {folded} of which the server "
                    f"got only as aggregates; upload them with: mlbench-metrics sync {directory} --to URL"
                )
    finally:
        for client in clients.values():
            client.close()
    return status


def _sync_to(args: argparse.Namespace, dirs: list[Path]) -> int:
    """``sync --to URL``: upload the raw copies to a server with the batch endpoint."""
    from ..client.api import ApiClient

    status = EXIT_OK
    client = ApiClient(url=args.to, token=args.token)
    try:
        if "batch" not in client.server_extensions():
            raise CliError(
                f"{client.endpoint} has no batch endpoint; --to needs one (`mlbench-metrics serve`, without "
                "--no-extensions), so that every record is stored there once however often sync runs"
            )
        runs: dict[int, bool] = {}
        for directory in dirs:
            if not kept_raw(directory):
                print(f"{directory}: no raw copies (nothing in it was folded into aggregates)")
                continue
            try:
                run_id = args.to_run or int(read_meta(directory)["run_id"])
            except SpoolError as exc:
                print(f"{directory}: skipped: {exc}", file=sys.stderr)
                status = EXIT_FAILED
                continue
            if run_id not in runs:
                runs[run_id] = client.get_run(run_id).result().status_code == 200
            if not runs[run_id]:
                print(
                    f"{directory}: run {run_id} does not exist at {client.endpoint}: create it there, or pass "
                    "--to-run ID",
                    file=sys.stderr,
                )
                status = EXIT_FAILED
                continue

            def work(progress: Callable[[int], None], directory: Path = directory, run: int = run_id) -> SyncReport:
                return sync_raw(directory, client, run_id=run, progress=progress)

            report = _run(directory, work, "raw records uploaded")
            if report is None:
                continue
            print(
                f"{directory}: run {report.run_id}: {report.delivered:,} raw records uploaded, "
                f"{report.already_stored:,} already there, {report.failed:,} failed, "
                f"{report.torn:,} torn or unreadable"
            )
            if not _ok(report, "not every raw record was uploaded"):
                status = EXIT_FAILED
            if report.owed:
                print(
                    f"  {directory}: kept: the run's own server still waits for records in it; deliver them "
                    f"with: mlbench-metrics sync {directory}"
                )
    finally:
        client.close()
    return status


def _run(directory: Path, work: Callable[[Callable[[int], None]], SyncReport], what: str) -> SyncReport | None:
    """Run ``work`` with progress on a terminal; None when the directory is busy (said so)."""
    sent = 0

    def counted(n: int) -> None:
        nonlocal sent
        sent += n
        if sys.stderr.isatty():
            progress(f"{directory.name}: {sent:,} {what}")

    report = work(counted)
    if sent:
        progress_done()
    if report.busy:
        print(f"{directory}: skipped, its process is still running (or another sync holds it)")
        return None
    return report


def _ok(report: SyncReport, why_kept: str) -> bool:
    """Print the report's problems (five at most); False when the directory was kept."""
    for error in report.errors[:5]:
        print(f"  {error}", file=sys.stderr)
    if len(report.errors) > 5:
        print(f"  ... and {len(report.errors) - 5} more", file=sys.stderr)
    if report.ok:
        return True
    print(f"  {report.path}: kept ({why_kept})", file=sys.stderr)
    return False
