"""Where a process's rank and world size are found, in order, without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlbench_metrics.logger.ranks import Placement, find_placement


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Placement(None, None)),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, Placement(3, 8)),
        ({"MLBENCH_METRICS_RANK": "5", "RANK": "3", "WORLD_SIZE": "8"}, Placement(5, 8)),
        ({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "4"}, Placement(2, 4)),
        ({"PMI_RANK": "1", "PMI_SIZE": "2"}, Placement(1, 2)),
        ({"SLURM_PROCID": "7", "SLURM_NTASKS": "16"}, Placement(7, 16)),
        ({"LOCAL_RANK": "1"}, Placement(1, None)),
        ({"RANK": "0", "SLURM_PROCID": "9", "SLURM_NTASKS": "16"}, Placement(0, None)),
        ({"RANK": "x", "PMI_RANK": "1", "PMI_SIZE": "2"}, Placement(1, 2)),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, Placement(None, None)),
        ({"RANK": "1", "WORLD_SIZE": "0"}, Placement(1, None)),
    ],
)
def test_the_rank_comes_from_the_first_launcher_that_sets_one(
    environ: dict[str, str], expected: Placement, caplog: pytest.LogCaptureFixture
) -> None:
    assert find_placement(environ) == expected


def test_a_bad_value_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    assert find_placement({"RANK": "two"}) == Placement(None, None)
    assert "ignoring RANK='two'" in caplog.text


def test_importing_the_library_and_its_integrations_never_imports_a_framework() -> None:
    code = (
        "import sys, mlbench_metrics, mlbench_metrics.integrations\n"
        "import mlbench_metrics.compat, mlbench_metrics.server\n"
        "mlbench_metrics.MetricsLogger  # noqa\n"
        "from mlbench_metrics.logger.ranks import find_placement; find_placement({})\n"
        "loaded = sorted(m for m in ('torch', 'lightning', 'transformers', 'keras') if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
