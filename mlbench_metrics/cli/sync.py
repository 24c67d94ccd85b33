"""The ``sync`` command of ``mlbench-metrics``: spools to the run's server, raw copies elsewhere.

``mlbench-metrics sync [DIR ...] [--url URL]`` delivers what dead processes left to the
server each spool was written for; ``--to URL [--to-run ID]`` uploads instead the raw
copies of records a slow server got as aggregates, to a server with the batch endpoint
(see :mod:`mlbench_metrics.spool.sync`). One line per writer directory on stdout, its
problems on stderr, progress on a terminal. ``main.py`` owns the parser.

Threads: ``mlbench-sync_*``, up to :data:`JOBS` directories delivered at once, started
and joined by the command (a Ctrl-C stops them sending: what is left stays for next time).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Final, Mapping

from .._lifecycle import process_state
from ..env import ENV_URL, env_str
from ..errors import SpoolError
from ..spool import default_spool_root, records_waiting, sync_raw, sync_writer, writer_dirs
from ..spool.files import read_meta
from ..spool.raw import kept_raw
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CliError, progress, progress_done

if TYPE_CHECKING:
    from ..client.api import ApiClient
    from ..spool import SyncReport

__all__ = ["JOBS", "cmd_sync"]

JOBS: Final = 4
"""Writer directories delivered at once (each as fast as its logger delivered live)."""

_WORKERS: Final = 5  # the client's workers per directory: ApiClient's default, as each logger had


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
    """Deliver each directory to its run's server, up to :data:`JOBS` directories at once
    (a run's ranks side by side, as they delivered live), each with the logger's own
    concurrency (``spool.sync``); one line per directory, in order."""
    from ..client.api import ApiClient

    status = EXIT_OK
    work: list[tuple[Path, str]] = []
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
        work.append((directory, url))
    if not work:
        return status
    jobs = min(JOBS, len(work))
    per_url = collections.Counter(url for _, url in work)
    clients = {
        url: ApiClient(url=url, token=args.token, max_workers=_WORKERS * min(jobs, n)) for url, n in per_url.items()
    }
    counter = _Progress("records sent")
    stop = threading.Event()
    try:
        with concurrent.futures.ThreadPoolExecutor(jobs, thread_name_prefix="mlbench-sync") as pool:
            futures = [
                pool.submit(sync_writer, d, clients[url], batch_size=args.batch_size, progress=counter.add, stop=stop)
                for d, url in work
            ]
            try:
                for (directory, _), future in zip(work, futures):
                    status = max(status, _said_writer(directory, future.result(), counter))
            except BaseException:
                stop.set()  # Ctrl-C: send nothing more; what is left stays, marked as far as it went
                raise
    finally:
        for client in clients.values():
            client.close()
    return status


def _said_writer(directory: Path, report: SyncReport, counter: _Progress) -> int:
    """Print what ``sync`` did with one directory; its exit status."""
    counter.done()
    if report.busy:
        return _said_busy(directory)
    print(
        f"{directory}: run {report.run_id}: {report.delivered:,} delivered, "
        f"{report.already_stored:,} already stored, {report.failed:,} failed, "
        f"{report.torn:,} torn or unreadable"
    )
    status = EXIT_OK if _ok(report, "not everything in it was delivered") else EXIT_FAILED
    if report.raw_kept:
        folded = "some" if report.raw_folded is None else f"{report.raw_folded:,}"
        print(
            f"  {directory}: kept: raw copies of {report.raw_kept:,} records, {folded} of which the server "
            f"got only as aggregates; upload them with: mlbench-metrics sync {directory} --to URL"
        )
    return status


def _said_busy(directory: Path) -> int:
    """A directory another process holds: say who, and fail when records wait in it."""
    try:
        waiting = records_waiting(directory)
    except (OSError, SpoolError, ValueError):
        waiting = 0
    holders = []
    for role, pid in _holders(directory):
        state = process_state(pid)
        if state == "stopped":
            print(
                f"{directory}: skipped: its {role} (pid {pid}) is stopped and {waiting:,} records wait in it: "
                f"resume it (kill -CONT {pid}) or end it (kill {pid}), then run sync again",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if state == "running":
            holders.append(f"its {role} (pid {pid})")
    who = " and ".join(holders) or "another process (or another sync)"
    if not waiting:
        print(f"{directory}: skipped, {who} is still running")
        return EXIT_OK
    print(
        f"{directory}: skipped: {waiting:,} records wait in it, and {who} holds it; they are delivered by it, "
        "or by sync once it has ended",
        file=sys.stderr,
    )
    return EXIT_FAILED


def _holders(directory: Path) -> list[tuple[str, int]]:
    """The processes that may hold a writer directory: its writer, its delivery agent."""
    found = []
    try:
        found.append(("writer", int(read_meta(directory).get("pid", 0))))
    except (SpoolError, TypeError, ValueError):
        pass
    if (directory / "status.bin").exists():
        from ..spool.durable.status import StatusArea

        try:
            area = StatusArea(directory / "status.bin")
        except SpoolError:
            return found
        try:
            found.append(("delivery agent", area.read().pid))
        finally:
            area.close()
    return [(role, pid) for role, pid in found if pid > 0]


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
            try:
                meta = read_meta(directory)
                run_id = args.to_run or int(meta["run_id"])
            except SpoolError as exc:
                print(f"{directory}: skipped: {exc}", file=sys.stderr)
                status = EXIT_FAILED
                continue
            if not kept_raw(directory):
                status = max(status, _no_raw_copies(directory, meta, client, args.to_run))
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

            report = _run(work, "raw records uploaded")
            if report.busy:
                status = max(status, _said_busy(directory))
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


def _no_raw_copies(directory: Path, meta: Mapping[str, object], client: ApiClient, to_run: int | None) -> int:
    """``sync --to`` on a directory without raw copies: what its own server waits for
    goes there when ``--to`` is that server; otherwise it is said, with how to send it."""
    waiting = records_waiting(directory)
    if not waiting:
        print(f"{directory}: no raw copies (nothing in it was folded into aggregates) and nothing waits in it")
        return EXIT_OK
    own = str(meta.get("endpoint", ""))
    if own == client.endpoint and to_run in (None, meta.get("run_id")):
        report = _run(lambda p: sync_writer(directory, client, progress=p), "records sent")
        return _said_writer(directory, report, _Progress("records sent"))
    print(
        f"{directory}: no raw copies, but {waiting:,} records wait in it for the run's own server "
        f"({own or 'unknown'}); --to uploads raw copies only. Send them with: mlbench-metrics sync {directory}"
        " (or --url URL for another server)",
        file=sys.stderr,
    )
    return EXIT_FAILED


class _Progress:
    """Records sent so far, over every directory, on a terminal (thread-safe)."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._sent = 0
        self._shown = False
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._sent += n
            if sys.stderr.isatty():
                self._shown = True
                progress(f"{self._sent:,} {self._what}")

    def done(self) -> None:
        with self._lock:
            if self._shown:
                progress_done()
                self._shown = False


def _run(work: Callable[[Callable[[int], None]], SyncReport], what: str) -> SyncReport:
    """Run ``work`` with progress on a terminal."""
    counter = _Progress(what)
    report = work(counter.add)
    counter.done()
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
