"""The durable log's file layout: slots, control bits, state, segment names.

Shared by the writer (``log.py``, ``range_store.py``) and the reader (``replay.py``) of the
one format; see the package docstring. No threads, no I/O.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "COMMIT",
    "COMMIT_AT",
    "CONTROL_AT",
    "CTL_DELIVERED",
    "CTL_DONE",
    "CTL_END",
    "CTL_START",
    "DONE_BIT",
    "END_BIT",
    "FLAGS_AT",
    "FLAG_CUMULATIVE",
    "FLAG_STEP",
    "GAP_WINDOW",
    "KIND_AT",
    "KIND_FLOAT",
    "KIND_INT",
    "KIND_STR",
    "NO_STEP",
    "SEGMENT_SLOTS",
    "SLOT",
    "SLOT_F",
    "SLOT_I",
    "START_BIT",
    "STATE",
    "STATE_MAGIC",
    "STEP_BIT",
    "segment_first",
    "segment_name",
]

SLOT: Final = 48
SLOT_F: Final = struct.Struct("<dqqIIBBxxxxxxQ")
SLOT_I: Final = struct.Struct("<qqqIIBBxxxxxxQ")
COMMIT: Final = struct.Struct("<Q")
KIND_AT: Final = 32
FLAGS_AT: Final = 33
CONTROL_AT: Final = 36
COMMIT_AT: Final = 40
SEGMENT_SLOTS: Final = 349_525  # 16 MiB
KIND_FLOAT, KIND_INT, KIND_STR = 0, 1, 2
FLAG_CUMULATIVE, FLAG_STEP = 1, 2
NO_STEP: Final = -(2**63)
CTL_START, CTL_END, CTL_DELIVERED, CTL_DONE = 1, 2, 4, 8
STEP_BIT: Final = bytes(b & FLAG_STEP for b in range(256))  # flags byte -> its step bit
DONE_BIT: Final = bytes(b & CTL_DONE for b in range(256))
START_BIT: Final = bytes(b & CTL_START for b in range(256))  # control byte -> its batch-start bit
END_BIT: Final = bytes(b & CTL_END for b in range(256))
GAP_WINDOW: Final = 4096  # uncommitted slots read past: threads caught between taking and filling one
STATE_MAGIC: Final = b"MLBMDUR2"
STATE: Final = struct.Struct("<8sQQ")  # magic, watermark, highest seq batched + 1


def segment_name(first: int) -> str:
    return f"seg-{first:012d}.bin"


def segment_first(name: str) -> int:
    """The first slot of the segment file named ``name`` (the inverse of :func:`segment_name`)."""
    return int(name[4:-4])
