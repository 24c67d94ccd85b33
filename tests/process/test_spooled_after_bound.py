"""``stats.spooled`` says what is on disk, also right after the size bound deleted some.

Before, records in a segment (or spool file) the bound deleted kept counting as spooled
until the dispatcher came to send their batch: with a server that does not answer (every
send in flight hangs), never while it hung.
"""

from __future__ import annotations

from pathlib import Path

from fakes import HANG, ScriptedServer
from mlbench_metrics import MetricsLogger
from mlbench_metrics.spool.durable.layout import SEGMENT_SLOTS

from helpers import wait_until


def test_spooled_drops_as_soon_as_the_durable_bound_deletes_a_segment(tmp_path: Path) -> None:
    n = 2 * SEGMENT_SLOTS + 100_000  # the third segment pushes the first out (two are kept)
    hung = ScriptedServer(lambda seen, index: HANG)
    log = MetricsLogger(
        1, url=hung.address, durable=True, spool_dir=tmp_path, spool_max_bytes=1 << 20, flush_interval=0.1
    )
    try:
        for i in range(n):
            log.log("x", i)

        def counted() -> bool:
            stats = log.stats
            return stats.dropped.get("spool_full", 0) >= SEGMENT_SLOTS - 5000

        wait_until(counted, timeout=60, what="the deleted segment's records counted as dropped")
        stats = log.stats
        # four batches of the deleted segment were read before, and are in flight; one may straddle
        assert stats.spooled <= n - SEGMENT_SLOTS + 5000
        assert stats.logged == n and stats.pending + stats.dropped_total == n
    finally:
        log.close(timeout=1.0)
        hung.stop()
