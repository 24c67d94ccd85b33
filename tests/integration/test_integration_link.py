"""What every integration shares (RunLink), without any framework installed."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from mlbench_metrics import Run
from mlbench_metrics.integrations._run import RunLink, jsonable, scalar
from mlbench_metrics.server import ServerHandle


class _Tensor:
    """What a framework's 0-d tensor offers: ``ndim`` and ``item()``."""

    ndim = 0

    def __init__(self, value: Any) -> None:
        self.value = value

    def item(self) -> Any:
        return self.value


def _steps(server: ServerHandle, run_id: int) -> dict[str, list[int]]:
    answer = requests.get(f"{server.url}/api/runs/{run_id}/points/", timeout=30).json()
    return {s["name"]: s["points"]["step"] for s in answer["series"]}


def test_a_value_it_cannot_record_is_skipped_with_one_warning_and_the_rest_recorded(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    link = RunLink(None, "link-skips", url=server.address)
    too_long = "x" * 60
    with caplog.at_level(logging.WARNING, "mlbench_metrics.integrations"):
        for step in range(3):
            link.log({"loss": _Tensor(0.5), too_long: 1.0, "hist": [1, 2], "flag": True}, step=step, epoch=1.5)
    run_id = link.run_id
    assert isinstance(run_id, int)
    link.close()
    assert _steps(server, run_id) == {"loss": [0, 1, 2], "flag": [0, 1, 2]}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and any(too_long in w for w in warnings) and any("'hist'" in w for w in warnings)
    assert Run.get(run_id, url=server.address).state == "finished"


def test_config_is_merged_and_stored_whole_and_logging_after_the_end_reopens_the_run(server: ServerHandle) -> None:
    link = RunLink(None, "link-config", url=server.address, config={"seed": 1})
    link.update_config({"lr": 0.1, "betas": (0.9, 0.99), "device": object(), "bad": float("nan")})
    link.log({"loss": 1.0}, step=0)
    link.update_config({"lr": 0.2})
    run_id = link.run_id
    assert isinstance(run_id, int)
    link.close(failed=True)
    run = Run.get(run_id, url=server.address)
    assert run.state == "failed"
    config = run.config()
    assert {k: config[k] for k in ("seed", "lr", "betas", "bad")} == {
        "seed": 1,
        "lr": 0.2,
        "betas": [0.9, 0.99],
        "bad": "nan",
    }
    assert config["device"].startswith("<object object")
    link.log({"test_loss": 2.0}, step=9)  # a test after fit: the same run
    assert link.run_id == run_id
    link.close()
    assert _steps(server, run_id) == {"loss": [0], "test_loss": [9]}


def test_a_config_too_large_is_warned_about_not_raised(server: ServerHandle, caplog: pytest.LogCaptureFixture) -> None:
    link = RunLink(None, "link-big", url=server.address)
    link.log({"loss": 1.0})
    with caplog.at_level(logging.WARNING, "mlbench_metrics.integrations"):
        link.update_config({"blob": "x" * 100_000})
    assert "not stored" in caplog.text
    link.close()


def test_scalars_and_json() -> None:
    assert [scalar(v) for v in (1, 2.5, True, "a", _Tensor(3), [1], None)] == [1, 2.5, 1, "a", 3, None, None]
    assert jsonable({"a": (1, {2}), 3: float("inf")}) == {"a": [1, [2]], "3": "inf"}


def test_configurations_land_in_the_order_given(server: ServerHandle) -> None:
    # Each send replaces the whole config; two on the client's pool at once could land
    # in either order, and the older one last (seen once under load).
    link = RunLink(None, "link-order", url=server.address, config={"step": 0})
    link.log({"loss": 1.0})
    for i in range(1, 30):
        link.update_config({"step": i})
    run_id = link.run_id
    assert isinstance(run_id, int)
    link.close()
    assert Run.get(run_id, url=server.address).config() == {"step": 29}


def test_a_hyperparameter_naming_a_file_whose_bytes_are_not_utf8_does_not_lose_the_config(
    server: ServerHandle,
) -> None:
    data_dir = Path(os.fsdecode(b"/data/caf\xe9"))  # a Latin-1 file name on a UTF-8 system
    link = RunLink(None, "link-bytes", url=server.address)
    link.update_config({"lr": 0.1, "data_dir": data_dir, os.fsdecode(b"k\xfe"): 1})
    link.log({"loss": 1.0}, step=0)
    run_id = link.run_id
    assert isinstance(run_id, int)
    link.close()
    stored = requests.get(f"{server.url}/api/runs/{run_id}/config/", timeout=30).json()["config"]
    assert stored == {"lr": 0.1, "data_dir": "/data/caf\\xe9", "k\\xfe": 1}  # the server refused it whole before
