"""Adopting orphans: what dead processes of the same run left in the spool, delivered.

A training script restarted after a crash finds its previous attempt's writer
directories next to its own (``<root>/run-<id>/``) with nobody holding their locks, and
delivers them through ``sync``'s own code (:func:`~mlbench_metrics.spool.sync_writer`:
the directory's lock is taken, batches keep their ids, and a directory is removed only
once all of it is delivered). Directories written for another server (the same run
number elsewhere) are left for ``mlbench-metrics sync``.

Threads: :class:`Adoption` runs :func:`adopt` in ``mlbench-adopt`` (the agent runs it
in its own thread of that name).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from .._threads import start_thread
from ..errors import SpoolError
from ..spool import SyncReport, sync_writer
from ..spool.files import read_meta, try_lock
from ..spool.sync import Poster

__all__ = ["Adoption", "adopt", "orphans"]

_log = logging.getLogger("mlbench_metrics")


def _held(lock: Path) -> bool:
    """Whether some process holds ``lock`` (a missing file is nobody's)."""
    try:
        fd = try_lock(lock)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)  # (releases what this look took)
    return False


def orphans(own: Path, endpoint: str) -> list[Path]:
    """The writer directories next to ``own`` (the same run) left by dead processes of
    this user for the server at ``endpoint``, oldest first."""
    run_dir = own.parent
    try:
        candidates = sorted((p for p in run_dir.iterdir() if p != own), key=lambda p: p.stat().st_mtime)
    except OSError:
        return []
    found = []
    for path in candidates:
        try:
            if path.stat().st_uid != os.geteuid():
                continue  # another user's (a shared spool root): not sent with our token
            meta = read_meta(path)
        except SpoolError as exc:
            _say_damaged(path, exc)
            continue
        except OSError:
            continue  # gone meanwhile
        if meta.get("endpoint") != endpoint:
            continue
        if _held(path / "owner.lock") or _held(path / "agent.lock"):
            continue
        found.append(path)
    return found


def _say_damaged(path: Path, exc: SpoolError) -> None:
    """A directory of this run whose ``meta.json`` cannot be read, left by a dead process
    (its lock was taken and let go; one still being created has no lock yet, or a held
    one): say so now, rather than at the next ``sync``; it is kept as it is."""
    lock = path / "owner.lock"
    if not lock.exists() or _held(lock):
        return
    _log.warning(
        "mlbench-metrics: %s, left by an earlier process of this run, cannot be delivered: %s; it is kept "
        "(repair meta.json, then run: mlbench-metrics sync %s --url URL)",
        path,
        exc,
        path,
    )


def adopt(dirs: list[Path], client: Poster, batch_size: int, stop: threading.Event) -> list[SyncReport]:
    """Deliver each directory as ``sync`` would, until ``stop`` is set (then what is left
    of a directory stays in it, marked as far as it went: safe to deliver again)."""
    reports = []
    for path in dirs:
        if stop.is_set():
            break
        try:
            report = sync_writer(path, client, batch_size=batch_size, stop=stop)
        except Exception as exc:  # the client closed under it, say: the directory stays
            if not stop.is_set():
                _log.warning("mlbench-metrics: delivering %s left by an earlier process failed: %s", path, exc)
            continue
        reports.append(report)
        if report.busy or stop.is_set():
            continue
        if report.ok:
            _log.info(
                "mlbench-metrics: delivered %d records an earlier process of run %d left in %s",
                report.delivered + report.already_stored,
                report.run_id,
                path,
            )
        else:
            _log.warning(
                "mlbench-metrics: %s, left by an earlier process, is kept: %d delivered, %d failed, %d unreadable (%s)",
                path,
                report.delivered + report.already_stored,
                report.failed,
                report.torn,
                "; ".join(report.errors[:2]),
            )
    return reports


class Adoption:
    """Delivers orphans from a logger that delivers in its own process (thread delivery).

    Args:
        dirs: the orphans (see :func:`orphans`).
        client: the logger's client.
        batch_size: records per batch for ranges never batched.
    """

    def __init__(self, dirs: list[Path], client: Poster, batch_size: int) -> None:
        self._stop = threading.Event()
        self._thread = start_thread(adopt, "mlbench-adopt", args=(dirs, client, batch_size, self._stop))

    def close(self, timeout: float) -> None:
        """Stop (what is left stays for the next logger of the run, or ``sync``)."""
        self._stop.set()
        self._thread.join(max(0.0, timeout))
