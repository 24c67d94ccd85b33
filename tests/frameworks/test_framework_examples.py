"""The framework examples run as a user runs them, each with its own embedded server, on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lightning_fit.py", ["finished: config {'lr': 0.05, 'hidden': 16}", "train_loss_step: 48 points"]),
        ("transformers_trainer.py", ["finished", "loss: 10 points", "eval_loss: 2 points"]),
        ("keras_fit.py", ["finished: optimizer adam", "batch_loss: 39 points", "epoch_val_loss: 3 points"]),
        ("torch_ddp.py", ["finished", "train_loss @ 0: 20 points", "train_loss @ 1: 20 points", "lr @ 1: 20 points"]),
    ],
)
def test_the_example(name: str, expected: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=240, cwd=EXAMPLES.parent
    )
    assert result.returncode == 0, result.stderr
    for line in expected:
        assert line in result.stdout, result.stdout
    assert "Traceback" not in result.stderr
