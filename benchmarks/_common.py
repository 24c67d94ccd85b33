"""Shared helpers for the benchmarks: results files, statistics, machine facts.

Every benchmark prints ratios against a baseline measured in the same run (the
machines are shared and noisy) and writes its figures to ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import requests

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """Write ``figures`` (plus machine facts) to ``results/<name>.json`` and return the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **figures}
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    print(f"\nresults written to {path}")
    return path


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def verdict(value: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "meets target" if ok else "MISSES target"


def create_run(url: str, name: str = "bench") -> int:
    """Create a custom-image run on the server at ``url`` (``http://host:port``); its id."""
    r = requests.post(
        f"{url}/api/runs/",
        data={
            "name": name,
            "num_workers": 1,
            "image_name": "custom_image",
            "custom_image_name": "x",
            "custom_image_command": "true",
            "backend": "GLOO",
        },
    )
    r.raise_for_status()
    return int(r.json()["id"])
