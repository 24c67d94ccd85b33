"""Reading a run back from the embedded server, as the framework tests compare it."""

from __future__ import annotations

from typing import Any

import requests

from mlbench_metrics import Run
from mlbench_metrics.server import ServerHandle


def points(server: ServerHandle, run_id: int) -> dict[str, list[tuple[int | None, float]]]:
    """Each series of the run: name -> [(step, value), ...] in the order stored."""
    answer: dict[str, Any] = requests.get(f"{server.url}/api/runs/{run_id}/points/", timeout=30).json()
    return {
        s["name"]: [(step, float(value)) for step, value in zip(s["points"]["step"], s["points"]["value"])]
        for s in answer["series"]
    }


def epochs(server: ServerHandle, run_id: int, name: str) -> list[int]:
    """The epoch in each record's metadata of series ``name``."""
    answer: dict[str, Any] = requests.get(f"{server.url}/api/runs/{run_id}/points/", timeout=30).json()
    return next(s["points"]["epoch"] for s in answer["series"] if s["name"] == name)


def run(server: ServerHandle, run_id: int) -> Run:
    """The run, with its state."""
    return Run.get(run_id, url=server.address)
