"""What close says against a slow server: one accurate line, no alarm about itself.

Before, every close with ``aggregate="off"`` against a slow server printed "deliver
failed: TransientApiError: not sent: the client was closed first", although those records
were spooled as they should be: the posts not sent were the ones close itself gave up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import serve

from helpers import create_run


def test_close_with_aggregation_off_against_a_slow_server_says_where_records_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(extensions=False, pace=20) as slow:
        run = create_run(slow.url)
        log = MetricsLogger(run["id"], url=slow.address, spool_dir=tmp_path, aggregate="off", flush_interval=0.1)
        log.log("warmup", 1.0)
        assert log.flush(30)  # the server is known: no batch endpoint, single posts
        for step in range(300):
            log.log("loss", 1.0 / (step + 1), step=step)
        with caplog.at_level(logging.WARNING, logger="mlbench_metrics"):
            left = log.close(timeout=3.0)  # far less than the 15 s the server needs for them
    stats = log.stats
    lines = [r.getMessage() for r in caplog.records]
    assert left > 0 and stats.spooled == left and stats.dropped == {}
    assert not [line for line in lines if "failed" in line], lines
    assert any(f"{left} records wait in" in line for line in lines), lines
