"""Spool directories and the framing every appended spool file uses.

Layout, one directory per run and one per writing process::

    <root>/run-<run_id>/<host>-<pid>-<id>/
        owner.lock      flock'd while the writing process lives (sync skips it)
        meta.json       run id, endpoint, batch-id prefix, durable or not

Appended files (``spool-*.log``, ``dict.log``) are sequences of frames::

    [length u32][count u32][crc32 of the payload u32][crc32 of the 12 bytes before u32][payload]

``count`` is how many records the payload holds, so a frame torn by a crash (the last
one, cut short) or damaged later (a bad checksum) is reported with the records it cost;
the header's own checksum lets a reader trust ``length`` and ``count`` and go on after
a damaged payload. A damaged header makes the reader look for the next good one.

This module owns :class:`SpoolDir` and the frame format. No threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import threading
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Iterator

from ..env import ENV_SPOOL_DIR, env_str
from ..errors import SpoolError

__all__ = [
    "HEADER_SIZE",
    "Frame",
    "SpoolDir",
    "default_spool_root",
    "frame",
    "fsync_dir",
    "read_frames",
    "read_meta",
    "remove_writer_dir",
    "try_lock",
    "writer_dirs",
]

_HEADER: Final = struct.Struct("<IIII")
HEADER_SIZE: Final = _HEADER.size
_MAX_FRAME: Final = 1 << 30  # no frame we write is near this: a larger length is damage


def default_spool_root() -> Path:
    """``MLBENCH_METRICS_SPOOL_DIR``, else ``$XDG_CACHE_HOME/mlbench-metrics/spool``."""
    explicit = env_str(ENV_SPOOL_DIR)
    if explicit:
        return Path(explicit).expanduser()
    cache = env_str("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mlbench-metrics" / "spool"


def frame(payload: bytes, count: int = 1) -> bytes:
    """``payload`` holding ``count`` records, with its header in front."""
    head = struct.pack("<III", len(payload), count, zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


@dataclass(frozen=True)
class Frame:
    """One frame as read back.

    Attributes:
        offset: where it starts in the file.
        payload: its bytes, or None when it is torn or damaged.
        count: the records it holds (0 when even its header is unreadable).
        problem: None, ``"torn"`` (cut short: the end of the file) or ``"damaged"``.
    """

    offset: int
    payload: bytes | None
    count: int
    problem: str | None = None


def _header_at(data: bytes, offset: int) -> tuple[int, int, int] | None:
    """``(length, count, payload crc)`` of a good header at ``offset``, else None."""
    if offset + HEADER_SIZE > len(data):
        return None
    length, count, crc, head_crc = _HEADER.unpack_from(data, offset)
    if zlib.crc32(data[offset : offset + 12]) != head_crc or length > _MAX_FRAME:
        return None
    return length, count, crc


def read_frames(data: bytes) -> Iterator[Frame]:
    """Every frame in ``data``, good, torn or damaged, in order.

    Zeros where a header should be are the end (preallocated, never written). A damaged
    header is reported once, with the bytes up to the next good header.
    """
    offset, end = 0, len(data)
    while offset < end:
        header = _header_at(data, offset)
        if header is None:
            if not any(data[offset : offset + HEADER_SIZE]):
                return  # never written
            good = _next_header(data, offset + 1)
            yield Frame(offset, None, 0, "torn" if good is None and offset + HEADER_SIZE > end else "damaged")
            if good is None:
                return
            offset = good
            continue
        length, count, crc = header
        start = offset + HEADER_SIZE
        if start + length > end:
            yield Frame(offset, None, count, "torn")
            return
        payload = data[start : start + length]
        if zlib.crc32(payload) == crc:
            yield Frame(offset, payload, count)
        else:
            yield Frame(offset, None, count, "damaged")
        offset = start + length


def _next_header(data: bytes, start: int) -> int | None:
    """The offset of the next good header at or after ``start`` (a slow scan: damage only)."""
    for offset in range(start, len(data) - HEADER_SIZE + 1):
        if _header_at(data, offset) is not None:
            return offset
    return None


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new or renamed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_meta(path: Path) -> dict[str, Any]:
    """A writer directory's ``meta.json``.

    Raises:
        SpoolError: it is missing, unreadable or not a JSON object with a run id.
    """
    try:
        meta = json.loads((path / "meta.json").read_text())
        int(meta["run_id"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SpoolError(f"{path / 'meta.json'} is damaged ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise SpoolError(f"{path / 'meta.json'} is damaged (not an object)")
    return meta


def _absolute(path: Path) -> Path:
    """``path`` made absolute now: the script may change directory later, and an agent or
    a restarted one must find the same directory (as is, when the directory is gone)."""
    try:
        return path.absolute()
    except OSError:
        return path


class SpoolDir:
    """One writing process's spool directory; created on first use, locked while alive.

    Args:
        root: the spool root (``default_spool_root()`` when None).
        run_id: the run the records belong to.
        meta: facts written to ``meta.json`` (endpoint, batch-id prefix, ...).
    """

    def __init__(self, root: str | os.PathLike[str] | None, run_id: int, meta: dict[str, Any]) -> None:
        self.root = _absolute(Path(root) if root is not None else default_spool_root())
        self.run_id = run_id
        self.writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path = self.root / f"run-{run_id}" / self.writer
        self.meta = {"run_id": run_id, "writer": self.writer, "pid": os.getpid(), **meta}
        self._lock_fd: int | None = None
        self._created = False
        self._guard = threading.Lock()

    def ensure(self) -> Path:
        """Create the directory (and take its lock) if that was not done yet.

        Raises:
            SpoolError: it cannot be created or written.
        """
        with self._guard:
            if not self._created:
                try:
                    self.path.mkdir(parents=True, exist_ok=True)
                    fd = os.open(self.path / "owner.lock", os.O_CREAT | os.O_RDWR, 0o644)
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._lock_fd = fd
                    tmp = self.path / "meta.json.tmp"
                    tmp.write_text(json.dumps(self.meta))
                    os.replace(tmp, self.path / "meta.json")
                    fsync_dir(self.path)
                except OSError as exc:
                    raise SpoolError(f"cannot create the spool directory {self.path}: {exc}") from exc
                self._created = True
        return self.path

    def problem(self) -> str | None:
        """Why the directory could not be created, when that is clear already; None
        when it can be (or exists). Nothing is created to find out."""
        path = self.path
        while not path.exists():
            if path.parent == path:
                return f"the spool directory {self.path} cannot be created: no existing parent"
            path = path.parent
        if not path.is_dir():
            return f"the spool directory {self.path} cannot be created: {path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"the spool directory {self.path} cannot be created: {path} is not writable"
        return None

    @property
    def created(self) -> bool:
        """Whether the directory exists (something was spooled or durable mode is on)."""
        return self._created

    def size(self) -> int:
        """Bytes in the directory's files."""
        if not self._created:
            return 0
        total = 0
        for p in self.path.iterdir():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def release(self, remove: bool) -> None:
        """Drop the lock; with ``remove``, delete the directory (nothing left to deliver)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if remove and self._created:
            remove_writer_dir(self.path)


def try_lock(path: Path, *, create: bool = False) -> int | None:
    """Take ``path``'s lock (``owner.lock``, ``agent.lock``) without waiting.

    Returns:
        The fd that holds it (closing the fd releases it), or None when another open
        file holds it: its process is alive.

    Raises:
        OSError: the file cannot be opened (``FileNotFoundError``: it does not exist
            and ``create`` is False).
    """
    fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_writer_dir(path: Path) -> None:
    """Delete a writer directory whose records are all delivered (and its run's, if empty)."""
    for p in path.iterdir():
        with contextlib.suppress(OSError):
            p.unlink()
    with contextlib.suppress(OSError):
        path.rmdir()
    with contextlib.suppress(OSError):
        path.parent.rmdir()  # the run's directory, when it was the last writer


def writer_dirs(paths: list[Path]) -> Iterator[Path]:
    """Writer directories under each path (a root, a run directory or a writer directory)."""
    for path in paths:
        if (path / "meta.json").exists():
            yield path
            continue
        for meta in sorted(path.glob("*/meta.json")) + sorted(path.glob("*/*/meta.json")):
            yield meta.parent
