"""Adopting orphans: what dead processes of the same run left in the spool, delivered.

A training script restarted after a crash finds its previous attempt's writer
directories next to its own (``<root>/run-<id>/``) with nobody holding their locks, and
delivers them through ``sync``'s own code (:func:`~mlbench_metrics.spool.sync_writer`:
the directory's lock is taken, batches keep their ids, and a directory is removed only
once all of it is delivered). Directories written for another server (the same run
number elsewhere) are left for ``mlbench-metrics sync``. No threads are started here:
the agent, or a logger delivering from its own process, runs :func:`adopt` in one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path

from ..errors import SpoolError
from ..spool import SyncReport, sync_writer
from ..spool.files import read_meta
from ..spool.sync import Poster

__all__ = ["adopt", "orphans"]

_log = logging.getLogger("mlbench_metrics")


def _held(lock: Path) -> bool:
    """Whether some process holds ``lock`` (a missing file is nobody's)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # (closing releases what this look took)
    return False


def orphans(own: Path, endpoint: str) -> list[Path]:
    """The writer directories next to ``own`` (the same run) left by dead processes for
    the server at ``endpoint``, oldest first."""
    run_dir = own.parent
    try:
        candidates = sorted((p for p in run_dir.iterdir() if p != own), key=lambda p: p.stat().st_mtime)
    except OSError:
        return []
    found = []
    for path in candidates:
        try:
            meta = read_meta(path)
        except SpoolError:
            continue  # damaged, or being created: sync reports it
        if meta.get("endpoint") != endpoint:
            continue
        if _held(path / "owner.lock") or _held(path / "agent.lock"):
            continue
        found.append(path)
    return found


def adopt(dirs: list[Path], client: Poster, batch_size: int, stop: threading.Event) -> list[SyncReport]:
    """Deliver each directory as ``sync`` would, until ``stop`` is set (checked between
    directories; an interrupted one is safe to deliver again)."""
    reports = []
    for path in dirs:
        if stop.is_set():
            break
        try:
            report = sync_writer(path, client, batch_size=batch_size)
        except Exception as exc:  # the client closed under it, say: the directory stays
            _log.warning("mlbench-metrics: delivering %s left by an earlier process failed: %s", path, exc)
            continue
        reports.append(report)
        if report.busy:
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
