"""Reading a dead writer's durable log, and marking what ``sync`` delivered.

Everything readable after the delivered watermark comes back as records; what cannot be
read is reported one line per damage (what, which file, how many records): a damaged
dictionary entry, records that refer to names or values it lost, a truncated segment.
No threads.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...records import Context
from ...records.checks import Value
from ..files import read_frames
from . import layout
from .layout import (
    COMMIT,
    COMMIT_AT,
    CONTROL_AT,
    CTL_DELIVERED,
    CTL_DONE,
    CTL_END,
    CTL_START,
    FLAG_STEP,
    GAP_WINDOW,
    KIND_AT,
    KIND_FLOAT,
    KIND_STR,
    SLOT,
    SLOT_F,
    SLOT_I,
    STATE,
    STATE_MAGIC,
    segment_first,
)

__all__ = ["DurableMarks", "DurableRecord", "DurableReport", "durable_metadata", "read_durable", "replay_batches"]


@dataclass
class DurableRecord:
    """One record read back from a durable log."""

    seq: int
    name: str
    value: Value
    time_ns: int
    step: int | None
    context: dict[str, Any]
    control: int


@dataclass
class DurableReport:
    """What a dead writer's durable log holds, and what of it cannot be read.

    Attributes:
        records: every readable committed record after the watermark, not done.
        watermark: everything before it was delivered.
        torn: uncommitted slots with data: ``log()`` calls killed halfway (never returned,
            so nothing was promised for them).
        unreadable: records known to exist that cannot be delivered.
        problems: one line per damage found: what, which file, how many records.
    """

    records: list[DurableRecord] = field(default_factory=list)
    watermark: int = 0
    torn: int = 0
    unreadable: int = 0
    problems: list[str] = field(default_factory=list)


def _read_dictionary(path: Path, report: DurableReport) -> tuple[dict[int, str], dict[int, Any], dict[int, str]]:
    names: dict[int, str] = {}
    contexts: dict[int, Any] = {}
    strings: dict[int, str] = {}
    damaged = 0
    dict_path = path / "dict.log"
    data = dict_path.read_bytes() if dict_path.exists() else b""
    for item in read_frames(data):
        if item.payload is None:
            damaged += item.problem == "damaged"
            continue
        try:
            entry = json.loads(item.payload)
            if "n" in entry:
                names[int(entry["n"])] = str(entry["v"])
            elif "c" in entry:
                contexts[int(entry["c"])] = entry
            elif "s" in entry:
                strings[int(entry["s"])] = str(entry["v"])
        except (ValueError, KeyError, TypeError):
            damaged += 1
    if damaged:
        report.problems.append(f"dict.log: {damaged} damaged entr{'y' if damaged == 1 else 'ies'}")
    return names, contexts, strings


def read_durable(path: Path) -> DurableReport:
    """Every record a dead writer's log holds after its watermark, and what is damaged."""
    report = DurableReport()
    names, contexts, strings = _read_dictionary(path, report)
    batched = 0
    state = path / "state.bin"
    if state.exists():
        raw = state.read_bytes()
        if len(raw) >= STATE.size and raw[:8] == STATE_MAGIC:
            _, report.watermark, batched = STATE.unpack_from(raw, 0)
    segments = sorted(path.glob("seg-*.bin"))
    firsts = [segment_first(p.name) for p in segments]
    missing_refs = 0
    for number, seg_path in enumerate(segments):
        first = firsts[number]
        data = seg_path.read_bytes()
        slots = len(data) // SLOT
        if slots < layout.SEGMENT_SLOTS:
            known_end = firsts[number + 1] if number + 1 < len(firsts) else batched
            lost = max(0, known_end - max(first + slots, report.watermark))
            report.unreadable += lost
            report.problems.append(
                f"{seg_path.name}: truncated to {len(data)} of {layout.SEGMENT_SLOTS * SLOT} bytes; "
                f"{lost} records past slot {slots} cannot be read"
            )
        i = 0
        while i < slots:
            seq, offset = first + i, i * SLOT
            (commit,) = COMMIT.unpack_from(data, offset + COMMIT_AT)
            if commit != seq + 1:
                # Not committed: a log() call that never returned (torn when half written).
                # Threads take slots before they fill them, so a later slot may be
                # committed; past a window with none, this is the end of the data.
                report.torn += any(data[offset : offset + SLOT])
                i = _next_commit(data, first, i + 1, min(slots, i + 1 + GAP_WINDOW))
                continue
            i += 1
            control = data[offset + CONTROL_AT]
            if seq < report.watermark or control & CTL_DONE:
                continue
            kind = data[offset + KIND_AT]
            value, time_ns, step, name_id, ctx_id, _, flags, _ = (SLOT_F if kind == KIND_FLOAT else SLOT_I).unpack_from(
                data, offset
            )
            name = names.get(name_id)
            context = contexts.get(ctx_id)
            text = strings.get(value) if kind == KIND_STR else None
            if name is None or context is None or (kind == KIND_STR and text is None):
                missing_refs += 1
                continue
            step_or_none = step if flags & FLAG_STEP else None
            report.records.append(
                DurableRecord(seq, name, text if text is not None else value, time_ns, step_or_none, context, control)
            )
    if missing_refs:
        report.unreadable += missing_refs
        report.problems.append(f"dict.log: {missing_refs} records refer to names or values it does not hold")
    return report


def _next_commit(data: bytes, first: int, start: int, stop: int) -> int:
    """The index of the first committed slot in ``start..stop-1``, else ``len(data)``."""
    for i in range(start, stop):
        (commit,) = COMMIT.unpack_from(data, i * SLOT + COMMIT_AT)
        if commit == first + i + 1:
            return i
    return len(data)


def replay_batches(records: list[DurableRecord], batch_size: int) -> list[list[DurableRecord]]:
    """The batches a replay sends: each range the dispatcher marked (it may have sent it
    under the range's id), then the records it never batched, in new ranges."""
    out = []
    i, n = 0, len(records)
    while i < n:
        if records[i].control & CTL_START:
            j = i
            while j < n and not records[j].control & CTL_END and (j == i or not records[j].control & CTL_START):
                j += 1
            contiguous = j < n and records[j].seq - records[i].seq == j - i
            if contiguous and records[j].control & CTL_END and (j == i or not records[j].control & CTL_START):
                out.append(records[i : j + 1])
                i = j + 1
                continue
        j = i + 1
        while (
            j < n
            and not records[j].control & CTL_START
            and j - i < batch_size
            and records[j].seq == records[j - 1].seq + 1
        ):
            j += 1
        out.append(records[i:j])
        i = j
    return out


def durable_metadata(context: dict[str, Any], step: int | None) -> str:
    """The metadata text of a durable record, as the live logger would have sent it."""
    rank, epoch, extra = context.get("rank"), int(context.get("epoch", 0)), context.get("extra", "")
    ctx = Context(rank, epoch, context.get("step"), False, extra)
    return ctx.metadata(step)


class DurableMarks:
    """Marks deliveries in a dead writer's log, as the live dispatcher would (for sync).

    Args:
        path: the writer directory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state = os.open(path / "state.bin", os.O_RDWR)

    def delivered(self, first: int, control: int) -> None:
        """Mark the batch starting at ``first`` (whose control byte is ``control``) delivered."""
        for seg_path in self.path.glob("seg-*.bin"):
            seg_first = segment_first(seg_path.name)
            if seg_first <= first < seg_first + layout.SEGMENT_SLOTS:
                with open(seg_path, "r+b") as seg:
                    seg.seek((first - seg_first) * SLOT + CONTROL_AT)
                    seg.write(bytes([control | CTL_DELIVERED]))
                return

    def watermark(self, seq: int) -> None:
        """Everything before ``seq`` is delivered."""
        os.pwrite(self._state, struct.pack("<Q", seq), 8)

    def close(self) -> None:
        """Release the state file."""
        os.close(self._state)
