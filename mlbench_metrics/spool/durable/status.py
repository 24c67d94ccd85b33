"""The status area a training process and its delivery agent share: ``status.bin``.

One memory-mapped page in the writer directory, next to the log it is about::

    @0     magic "MLBMAGT1"
    @8     the trainer's: flush requested up to slot (u64), the log's end (u64), flags
           (u64: 1 closed, nothing more will be written; 2 the end is known)
    @64    the agent's, behind a sequence lock: sequence (u64), pid, generation,
           delivered watermark, stored, retried, in flight, skipped slots, the range
           being settled (first, end), and a JSON text (dropped by reason, last error)
    @1272  notices: a count (u64) and the last four warnings the agent logged (up to 698
           bytes each, the rest of the page), for the trainer to repeat on its stderr

Progress flows through here and through the log's own marks, never through a request
per record: the trainer writes a few words when it flushes or closes, the agent
publishes its counts when it settles a batch. The agent's part has one writer at a
time (the agent holding ``agent.lock``); a reader retries while the sequence is odd or
moved under it, so it never sees half an update. The counts live in the file, so an
agent started after another died goes on from them. This module owns the format. No
threads.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Mapping

from ...errors import SpoolError

__all__ = ["AgentReport", "StatusArea"]

_MAGIC: Final = b"MLBMAGT1"
_TRAINER: Final = struct.Struct("<QQQ")  # @8: flush requested, end, flags
_AGENT: Final = struct.Struct("<QQQQQQQQQQ")  # @72: pid ... pending end
_SEQ_AT: Final = 64
_AGENT_AT: Final = 72
_TEXT_AT: Final = _AGENT_AT + _AGENT.size
_TEXT_MAX: Final = 1000
_NOTICES_AT: Final = 1272
_NOTICE: Final = 700  # four of them fill the page after the count: a warning with two paths fits
_NOTICE_SLOTS: Final = 4
_CUT: Final = b" [...]"
CLOSED, END_KNOWN = 1, 2


@dataclass(frozen=True)
class AgentReport:
    """What the agent last published.

    Attributes:
        pid: the agent's process id (0: no agent has started yet).
        generation: how many agents have started on this log.
        watermark: every slot below it is settled (stored or dropped).
        stored: records the server stored.
        retried: records sent again.
        in_flight: records sent and not answered yet.
        skipped: slots taken but never written (a ``log()`` interrupted before it
            returned): not records, so the trainer does not count them as logged.
        dropped: records given up, by reason.
        error: the latest delivery error.
        pending: a range counted and not yet marked delivered in the log, if any: an
            agent taking over marks it (it was settled).
    """

    pid: int = 0
    generation: int = 0
    watermark: int = 0
    stored: int = 0
    retried: int = 0
    in_flight: int = 0
    skipped: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    error: str | None = None
    pending: tuple[int, int] | None = None

    @property
    def dropped_total(self) -> int:
        """All dropped records, whatever the reason."""
        return sum(self.dropped.values())


class StatusArea:
    """``status.bin``, mapped.

    Args:
        path: the file.
        create: make it (the trainer, before it starts an agent); else open it.

    Raises:
        SpoolError: it cannot be created, or opened as a status area.
    """

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except OSError as exc:
            raise SpoolError(f"cannot open {path}: {exc}") from exc
        try:
            if create:
                os.posix_fallocate(fd, 0, mmap.PAGESIZE)
            elif os.fstat(fd).st_size < mmap.PAGESIZE:
                raise SpoolError(f"{path} is not a status area (too short)")
            self._mm = mmap.mmap(fd, mmap.PAGESIZE)
        except OSError as exc:
            raise SpoolError(f"cannot map {path}: {exc}") from exc
        finally:
            os.close(fd)
        if create:
            self._mm[:] = bytes(mmap.PAGESIZE)
            self._mm[0:8] = _MAGIC
        elif self._mm[0:8] != _MAGIC:
            self._mm.close()
            raise SpoolError(f"{path} is not a status area")

    # -- the trainer's part -------------------------------------------------------------

    def request_flush(self, upto: int) -> None:
        """Ask the agent to deliver every slot below ``upto`` now."""
        flush, _, _ = _TRAINER.unpack_from(self._mm, 8)
        if upto > flush:
            struct.pack_into("<Q", self._mm, 8, upto)

    def set_end(self, end: int, *, closed: bool) -> None:
        """The log ends at slot ``end``; ``closed``: the trainer writes nothing more."""
        struct.pack_into("<Q", self._mm, 16, end)  # the end before the flag that says it is known
        struct.pack_into("<Q", self._mm, 24, END_KNOWN | (CLOSED if closed else 0))

    def trainer(self) -> tuple[int, int | None, bool]:
        """(flush requested up to, the log's end if known, closed)."""
        flush, end, flags = _TRAINER.unpack_from(self._mm, 8)
        return flush, (end if flags & END_KNOWN else None), bool(flags & CLOSED)

    # -- the agent's part ---------------------------------------------------------------

    def publish(self, report: AgentReport) -> None:
        """Write the agent's counts (one writer at a time: the agent holding the lock)."""
        text = json.dumps({"dropped": dict(report.dropped), "error": (report.error or "")[:300]}).encode()
        pending = report.pending or (0, 0)
        (seq,) = struct.unpack_from("<Q", self._mm, _SEQ_AT)
        seq |= 1
        struct.pack_into("<Q", self._mm, _SEQ_AT, seq)  # odd: being written
        _AGENT.pack_into(
            self._mm,
            _AGENT_AT,
            report.pid,
            report.generation,
            report.watermark,
            report.stored,
            report.retried,
            report.in_flight,
            report.skipped,
            *pending,
            len(text[:_TEXT_MAX]),
        )
        self._mm[_TEXT_AT : _TEXT_AT + len(text[:_TEXT_MAX])] = text[:_TEXT_MAX]
        struct.pack_into("<Q", self._mm, _SEQ_AT, seq + 1)

    def read(self) -> AgentReport:
        """The agent's counts as last published (never half an update, unless the agent
        died in the middle of one: then what it left)."""
        for _ in range(10_000):  # an update takes microseconds; a dead writer, forever
            (before,) = struct.unpack_from("<Q", self._mm, _SEQ_AT)
            fields = _AGENT.unpack_from(self._mm, _AGENT_AT)
            text = self._mm[_TEXT_AT : _TEXT_AT + min(fields[-1], _TEXT_MAX)]
            (after,) = struct.unpack_from("<Q", self._mm, _SEQ_AT)
            if before == after and not before & 1:
                break
        pid, generation, watermark, stored, retried, in_flight, skipped, first, end, _ = fields
        try:
            extra = json.loads(text) if text else {}
        except ValueError:
            extra = {}
        return AgentReport(
            pid,
            generation,
            watermark,
            stored,
            retried,
            in_flight,
            skipped,
            {str(k): int(v) for k, v in extra.get("dropped", {}).items()},
            extra.get("error") or None,
            (first, end) if end else None,
        )

    def notice(self, text: str) -> None:
        """Leave a warning for the trainer to repeat (the last four are kept; one longer
        than a slot is cut, ending in ``[...]``)."""
        (count,) = struct.unpack_from("<Q", self._mm, _NOTICES_AT)
        data = text.encode(errors="replace")
        if len(data) > _NOTICE - 2:  # cut on a character's boundary, and say so
            data = data[: _NOTICE - 2 - len(_CUT)].decode(errors="ignore").encode() + _CUT
        at = _NOTICES_AT + 8 + (count % _NOTICE_SLOTS) * _NOTICE
        struct.pack_into("<H", self._mm, at, len(data))
        self._mm[at + 2 : at + 2 + len(data)] = data
        struct.pack_into("<Q", self._mm, _NOTICES_AT, count + 1)

    def notices(self, seen: int) -> tuple[int, list[str]]:
        """The notices after the first ``seen`` (at most the last four), and the new count."""
        (count,) = struct.unpack_from("<Q", self._mm, _NOTICES_AT)
        texts = []
        for number in range(max(seen, count - _NOTICE_SLOTS), count):
            at = _NOTICES_AT + 8 + (number % _NOTICE_SLOTS) * _NOTICE
            (length,) = struct.unpack_from("<H", self._mm, at)
            texts.append(self._mm[at + 2 : at + 2 + min(length, _NOTICE - 2)].decode(errors="replace"))
        return count, texts

    def close(self) -> None:
        """Unmap it (the file stays)."""
        if not self._mm.closed:
            self._mm.close()
