"""The logger takes the rank and world size launchers leave, and keeps both in each record."""

from __future__ import annotations

import json

import pytest

from mlbench_metrics import MetricsLogger
from mlbench_metrics.server import ServerHandle

from helpers import create_run

_LAUNCHERS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*_LAUNCHERS, "MLBENCH_METRICS_RANK"):
        monkeypatch.delenv(name, raising=False)


def _points(server: ServerHandle, run_id: int) -> dict[str, list[dict[str, object]]]:
    import requests

    answer = requests.get(f"{server.url}/api/runs/{run_id}/points/", timeout=30).json()
    return {s["name"]: [json.loads(m) for m in s["points"]["metadata"]] for s in answer["series"]}


@pytest.mark.parametrize(
    ("environ", "name", "world_size"),
    [
        ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"}, "loss @ 1", 2),
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, "loss @ 3", 4),
        ({"RANK": "0", "WORLD_SIZE": "2", "MLBENCH_METRICS_RANK": "5"}, "loss @ 5", 2),
        ({}, "loss", None),
    ],
)
def test_rank_and_world_size_from_the_launcher(
    server: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
    name: str,
    world_size: int | None,
) -> None:
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    run = create_run(server.url)
    with MetricsLogger(run["id"], url=server.address) as log:
        assert log.world_size == world_size
        log.log("loss", 0.5, step=1)
        log.log("loss", 0.25, step=2, note="x")
    metadata = _points(server, run["id"])[name]
    expected = {} if world_size is None else {"world_size": world_size}
    assert [{k: v for k, v in m.items() if k in ("step", "world_size")} for m in metadata] == [
        {"step": 1, **expected},
        {"step": 2, **expected},
    ]
    assert metadata[1]["note"] == "x"


def test_world_size_is_the_loggers_own_metadata_key(server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run = create_run(server.url)
    with MetricsLogger(run["id"], url=server.address) as log:
        with pytest.raises(ValueError, match="world_size"):
            log.log("loss", 1.0, world_size=3)
