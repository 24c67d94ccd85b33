"""Why records are given up: the one list of drop reasons.

Each reason's value is its key in :attr:`Stats.dropped <mlbench_metrics.Stats.dropped>`
and the word in the warnings, so it is part of the public surface: the text never changes.
"""

from __future__ import annotations

import enum

__all__ = ["DropReason"]


class DropReason(enum.Enum):
    """Why records were dropped; ``.value`` is the key in ``stats.dropped``."""

    OVERFLOW = "overflow"
    """Memory was full and no spool could take them."""

    REJECTED = "rejected"
    """The server refused them for good (or the client refused the batch itself)."""

    SHUTDOWN = "shutdown"
    """Undelivered when ``close`` ran out of time, and not on disk."""

    SPOOL_FULL = "spool_full"
    """The spool's size bound: the oldest spooled records were deleted."""

    SPOOL_FAILED = "spool_failed"
    """The disk could not be written or read back."""
