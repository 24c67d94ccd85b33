"""An MLBench benchmark script written for mlbench_core, run on 2 ranks through ``compat``.

``examples/mlbench_core_style.py`` is upstream's shape (Tracker phases, ``name @ rank``,
a ``TaskResult @ 0`` at the end) with only its import changed; each rank is a real
process, as the dashboard starts them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import requests

from mlbench_metrics.server import serve

from helpers import create_run

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "mlbench_core_style.py"
EPOCHS, BATCHES = 2, 15
PHASES = ["batch_load", "init", "fwd_pass", "comp_loss", "backprop", "agg", "opt_step", "comp_metrics"]


def expected_series(rank: int) -> dict[str, int]:
    """Points per series of one rank, by the script's construction."""
    per_batch = ["train_loss", "train_Prec@1", *(f"batch_{p}" for p in PHASES)]
    per_epoch = ["val_loss", "val_Prec@1", "val_global_Prec@1", "CumulativeTrainTimeEpoch", *PHASES, "end"]
    series = {f"{n} @ {rank}": EPOCHS * BATCHES for n in per_batch}
    series.update({f"{n} @ {rank}": EPOCHS for n in per_epoch})
    if rank == 0:  # the goal: reached in the last epoch
        series.update({f"{n} @ 0": 1 for n in ["TaskResult", "TotalCumulativeTrainTime"]})
        series.update({f"global_cum_{p} @ 0": 1 for p in [*PHASES, "end", "CumulativeTrainTimeEpoch"]})
    return series


@pytest.mark.parametrize("extensions", [True, False], ids=["batch-endpoint", "dashboard-like"])
def test_two_ranks_of_an_upstream_script_store_everything(extensions: bool, tmp_path: Path) -> None:
    with serve(extensions=extensions) as server:
        run = create_run(server.url)
        env = {**os.environ, "MLBENCH_METRICS_URL": server.address, "MLBENCH_METRICS_SPOOL_DIR": str(tmp_path)}
        options = ["--hosts", "127.0.0.1,127.0.0.1", "--backend", "gloo", "--epochs", str(EPOCHS)]
        options += ["--batches", str(BATCHES), "--report"]
        ranks = [
            subprocess.Popen(
                [sys.executable, str(SCRIPT), "--run_id", str(run["id"]), "--rank", str(rank), *options],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for rank in range(2)
        ]
        outputs = [proc.communicate(timeout=120) for proc in ranks]
        for proc, (_, err) in zip(ranks, outputs):
            assert proc.returncode == 0, err
            assert "Traceback" not in err
        reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
        series = {name: len(points) for name, points in server.store.series(run_id=run["id"])}
        zipped = requests.get(f"{server.url}/api/metrics/{run['id']}/?metric_type=run&format=zip").content

    assert series == {**expected_series(0), **expected_series(1)}
    for report in reports:
        assert report["goal_reached"] and report["not_delivered"] == 0
        assert report["stored"] == report["logged"] and report["dropped"] == {}
    assert reports[0]["logged"] == sum(expected_series(0).values()) - 1  # TaskResult: one post of its own
    official = zipfile.ZipFile(io.BytesIO(zipped)).read("official_result.txt").decode()
    assert official.startswith("70% Top 1 Validation Accuracy reached in ") and len(official) > 100
