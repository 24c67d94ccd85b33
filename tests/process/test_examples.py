"""The examples run as a new user would run them, each starting its own embedded server."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mlbench_metrics import Run
from mlbench_metrics.server import ServerHandle

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=120, cwd=EXAMPLES.parent
    )


def test_the_training_loop_example() -> None:
    result = run_example("train_loop.py", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "epoch 1:" in result.stdout and "metrics stored" in result.stdout
    assert "Traceback" not in result.stderr and "failed" not in result.stderr


def test_the_multi_rank_example() -> None:
    result = run_example("multi_rank.py", "--ranks", "3", "--steps", "100")
    assert result.returncode == 0, result.stderr
    for rank in range(3):
        assert f"train_loss @ {rank}: 100 points" in result.stdout
    assert result.stdout.strip().endswith("finished")


def test_the_mlbench_core_style_example() -> None:
    result = run_example("mlbench_core_style.py")  # plays the dashboard: 2 ranks under serve --exec
    assert result.returncode == 0, result.stderr
    assert "finished: 1290 metrics in 58 series" in result.stdout
    assert "TaskResult @ 0: 70% Top 1 Validation Accuracy reached in" in result.stdout


@pytest.mark.parametrize(("name", "args"), [("train_loop.py", "--epochs 1"), ("multi_rank.py", "--ranks 2 --steps 20")])
def test_an_example_run_by_serve_exec_logs_to_that_server_and_run(
    exec_server: ServerHandle, name: str, args: str
) -> None:
    # serve --exec hands its address and run in the environment; an example that starts a
    # server of its own instead logs the run's id there: 404, its metrics rejected and spooled.
    run = Run.create(
        "example-under-exec",
        custom_image_name="local",
        custom_image_command=f"{shlex.quote(sys.executable)} {shlex.quote(str(EXAMPLES / name))} {args}",
        backend="gloo",
        url=exec_server.address,
    )
    run.wait(timeout=120, poll=0.2)
    assert run.state == "finished", run.job_metadata.get("stderr")
    assert "train_loss @ 0" in run.metrics(), run.job_metadata.get("stderr")
    assert not any("404" in line for line in run.job_metadata.get("stderr", []))
